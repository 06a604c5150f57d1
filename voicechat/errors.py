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
    def corrupt(cls, path: object, reason: object) -> "KnowledgeIndexError":
        return cls(f"{path}: the knowledge index is corrupt ({reason}); "
                   "rebuild it with `voicechat index DIR --rebuild`")


class BackendError(VoicechatError):
    """A language-model backend failed (server gone, stream cut, bad response)."""
