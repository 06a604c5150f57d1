"""Audio: files, resampling, capture, endpointing and playback.

How a conversation uses it::

    speaker = Player(config.output_device, config.playback).open()
    listener = Listener(config, on_event, speaker, on_interrupt=cancel.set)
    listener.start()            # events arrive on the listener's thread:
                                # SpeechStarted, Level, UtteranceEnded (16 kHz int16 audio),
                                # UtteranceDiscarded, Interrupted, DeviceFailed
    speaker.begin()             # for each reply: push decoder audio (22.05 kHz) as it comes,
    speaker.push(chunk)         # then end(); flush() or listener.interrupt() cut it, and
    speaker.end()               # speaker.played_s says how much the user heard

With an echo canceller (``load_echo_canceller(enabled, speaker)``, given to the Listener as
``echo=``) the microphone is heard with the assistant's voice taken out, and speech during
playback interrupts it. Without one, half-duplex unless ``audio.barge_in: true``: while a reply
plays the microphone starts no turn. After DeviceFailed, ``listener.start()`` (optionally with
another device) reopens the microphone.
"""
