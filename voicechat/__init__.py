"""voicechat: a terminal voice assistant for talking with your own documents."""

__version__ = "0.1.0"
