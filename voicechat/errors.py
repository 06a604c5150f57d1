"""The one exception family. Every message is written for the user: what happened, what to do."""


class VoicechatError(Exception):
    """An error the user can act on; the CLI prints its message on one line and exits 2."""


class ConfigError(VoicechatError):
    """The configuration file or a command-line value is invalid."""


class ModelError(VoicechatError):
    """A model is missing, unreadable or does not match the expected format."""


class AudioError(VoicechatError):
    """An audio file or device cannot be used."""


class KnowledgeIndexError(VoicechatError):
    """The knowledge index is missing, stale or corrupt."""

    @classmethod
    def corrupt(cls, path: object, reason: object, folder: object = "DIR") -> "KnowledgeIndexError":
        """The store, the index's source of truth, is damaged: only re-embedding helps."""
        return cls(f"{path}: the knowledge index is corrupt ({reason}); "
                   f"rebuild it with `voicechat index {folder} --rebuild`")

    @classmethod
    def damaged(cls, path: object, reason: object, folder: object = "DIR") -> "KnowledgeIndexError":
        """A search file exported from the store is damaged: it is rewritten from the store."""
        return cls(f"{path}: the knowledge index is corrupt ({reason}); repair it with "
                   f"`voicechat index {folder}` (rewrites the search files from the index store, re-embeds nothing)")

    @classmethod
    def other_folder(cls, index_dir: object, built_for: object, folder: object) -> "KnowledgeIndexError":
        return cls(f"{index_dir} holds the index of {built_for}, not of {folder}; run "
                   f"`voicechat index {folder} --rebuild` to replace it, or give each folder its own "
                   "retrieval.index_dir")


class BackendError(VoicechatError):
    """A language-model backend failed (server gone, stream cut, bad response)."""
