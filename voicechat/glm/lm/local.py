"""The model in this process: a worker thread generates token by token into a queue.

The key/value cache outlives a reply: the next prompt of a conversation starts with the previous
prompt and reply, so only the new turn is computed (the shared prefix is found token by token).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from voicechat.errors import BackendError, VoicechatError
from voicechat.glm.lm import SamplingParams
from voicechat.worker import Worker

if TYPE_CHECKING:
    import torch

    from voicechat.glm.lm.checkpoint import LoadedLM

_END = object()


class LocalBackend:
    def __init__(self, loaded: LoadedLM):
        self.loaded = loaded
        self._lock = threading.Lock()  # one generation at a time: the model and cache are shared
        self._cache: Any = None
        self._cached_ids: list[int] = []

    @classmethod
    def from_pretrained(cls, path: Path, device: str = "auto", dtype: str = "auto",
                        quantization: str = "none") -> LocalBackend:
        from voicechat.glm.lm.checkpoint import load_glm

        return cls(load_glm(path, device=device, dtype=dtype, quantization=quantization))

    @property
    def vocab_size(self) -> int:
        return int(self.loaded.model.config.vocab_size)

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        if not prompt_ids:
            raise BackendError("the prompt is empty")
        tokens: queue.Queue[Any] = queue.Queue()
        abandoned = threading.Event()  # the consumer stopped reading
        worker = Worker(lambda: self._run(list(prompt_ids), params, cancel, abandoned, tokens), "lm-generate",
                        abandoned)
        worker.start()
        try:
            while (item := tokens.get()) is not _END and not cancel.is_set():
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:  # also when the consumer closes the stream early, or a Ctrl-C passes through it
            abandoned.set()
            worker.join()  # at most one more forward step: then the model is free again

    def close(self) -> None:
        with self._lock:
            self._cache = None
            self._cached_ids = []

    # --- worker -------------------------------------------------------------------------------

    def _run(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event,
             abandoned: threading.Event, tokens: queue.Queue[Any]) -> None:
        try:
            with self._lock:
                self._generate(prompt_ids, params, lambda: cancel.is_set() or abandoned.is_set(), tokens.put)
        except VoicechatError as error:
            tokens.put(error)
        except Exception as error:  # noqa: BLE001 - reported to the consumer as one clear error
            tokens.put(_as_backend_error(error))
        finally:
            tokens.put(_END)

    def _generate(self, prompt_ids: list[int], params: SamplingParams, stopped: Any, emit: Any) -> None:
        import torch

        model, device = self.loaded.model, self.loaded.device
        generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
        pending = self._reuse_cache(prompt_ids)
        try:
            with torch.inference_mode():
                for _ in range(params.max_new_tokens):
                    if stopped():
                        return
                    out = model(input_ids=torch.tensor([pending], device=device), past_key_values=self._cache,
                                use_cache=True)
                    self._cached_ids += pending
                    token = sample(out.logits[0, -1], params, generator)
                    emit(token)
                    if token in params.stop_ids:
                        return
                    pending = [token]
        except BaseException:
            self._cache, self._cached_ids = None, []  # a half-updated cache must not be reused
            raise

    def _reuse_cache(self, prompt_ids: list[int]) -> list[int]:
        """Keep the cached prefix this prompt shares; return the ids still to compute."""
        from transformers import DynamicCache

        shared = 0
        for cached, new in zip(self._cached_ids, prompt_ids):
            if cached != new:
                break
            shared += 1
        shared = min(shared, len(prompt_ids) - 1)  # the last prompt token gives the first logits
        if self._cache is None or shared == 0:
            self._cache, self._cached_ids = DynamicCache(), []
            return prompt_ids
        self._cache.crop(shared)
        self._cached_ids = self._cached_ids[:shared]
        return prompt_ids[shared:]

    @property
    def cached_tokens(self) -> int:
        """How many prompt tokens the next turn may reuse (for tests and benchmarks)."""
        return len(self._cached_ids)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Temperature and nucleus (top-p) sampling; temperature 0 is greedy."""
    import torch

    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > params.top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _as_backend_error(error: Exception) -> BackendError:
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return BackendError("the GPU ran out of memory while generating; shorten the context "
                            "(generation.context_budget) or use models.lm.quantization: 4bit")
    return BackendError(f"local generation failed ({type(error).__name__}: {error})")
