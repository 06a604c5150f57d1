from voicechat.cli import entry_point

entry_point()
