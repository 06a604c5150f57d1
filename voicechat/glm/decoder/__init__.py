"""GLM-4-Voice speech decoder: speech tokens -> 22.05 kHz audio, whole or streamed chunk by chunk."""

from voicechat.glm.decoder.model import SpeechDecoder
from voicechat.glm.decoder.session import DecoderSession

__all__ = ["SpeechDecoder", "DecoderSession"]
