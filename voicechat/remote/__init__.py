"""The remote engine: the whole engine (speech tokenizer, SONAR, the index, the LM, the decoder)
on a GPU machine, served over one WebSocket per conversation (server.py); the terminal, the
microphone and the speaker anywhere (client.py). protocol.py is the wire, codec.py the events on it.
"""
