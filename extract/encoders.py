"""Image encoders that turn frames into ``1 + k*k`` tokens: [CLS, k x k pooled patch grid].

An encoder is a config dataclass plus a builder registered for that dataclass. Three
architectures: SigLIP through transformers (CLS = ``pooler_output``, the attention-pooling head),
SigLIP 2 through transformers (fixed-resolution checkpoints are SigLIP models; NaFlex ones pool
over the real, aspect-following patch grid: docs/encoders.md) and CLIP ViTs through open_clip
(CLS = the class token after ``ln_post``, before projection).
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

Autocast = Literal["auto", "off", "bfloat16", "float16"]


def resolve_autocast(mode: str, device: torch.device) -> str:
    """An autocast setting made concrete: ``auto`` is bfloat16 on a GPU and off elsewhere."""
    if mode == "auto":
        return "bfloat16" if device.type == "cuda" else "off"
    return mode


def autocast_context(mode: str, device: torch.device) -> AbstractContextManager[Any]:
    """``torch.autocast`` to ``mode`` (``auto`` resolved as :func:`resolve_autocast`); ``off``
    runs in the weights' own dtype. Extraction and training both use this rule."""
    mode = resolve_autocast(mode, device)
    if mode == "off":
        return nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, mode))


@dataclass(frozen=True)
class SiglipConfig:
    """SigLIP vision tower via transformers. ``pretrained``: a hub id or a local directory."""

    pretrained: str = "google/siglip-large-patch16-384"
    pool: int = 3  # k: tokens = CLS + k x k pooled grid (0 = CLS only)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    autocast: Autocast = "auto"  # auto (bf16 on GPU, off on CPU) | off | bfloat16 | float16

    def __post_init__(self) -> None:
        check_encoder_settings(self.pool, self.autocast)


@dataclass(frozen=True)
class ClipConfig:
    """A CLIP ViT via open_clip.

    ``model``: an open_clip model name (``ViT-L-14-336``, ``ViT-B-16``) or ``hf-hub:org/repo``;
    ``pretrained``: an open_clip tag (``openai``), a local checkpoint file, or ``None`` for random
    weights; ``model_config``: a JSON file or folder of extra open_clip model configs to register.
    """

    model: str = "ViT-L-14-336"
    pretrained: str | None = "openai"
    model_config: str | None = None
    pool: int = 3  # as SiglipConfig.pool
    device: str = "auto"
    autocast: Autocast = "auto"

    def __post_init__(self) -> None:
        check_encoder_settings(self.pool, self.autocast)


MAX_POOL = 32  # beyond the patch grid of any supported model (the grid itself is checked at load)


def check_encoder_settings(pool: int, autocast: str) -> None:
    """Refuse an encoder setting before any model loads or any store is made."""
    if not 0 <= pool <= MAX_POOL:
        raise ValueError(f"encoder.pool must be between 0 (CLS only) and {MAX_POOL}, got {pool}")
    if autocast not in get_args(Autocast):
        raise ValueError(
            f"encoder.autocast must be one of {', '.join(get_args(Autocast))}, got {autocast!r}"
        )


@dataclass(frozen=True)
class Siglip2Config:
    """SigLIP 2 via transformers: a fixed-resolution checkpoint (``model_type`` siglip, e.g.
    ``google/siglip2-so400m-patch16-384``) or a NaFlex one (siglip2, e.g.
    ``google/siglip2-so400m-patch16-naflex``); ``pretrained``: a hub id or a local directory."""

    pretrained: str = "google/siglip2-so400m-patch16-384"
    pool: int = 3  # as SiglipConfig.pool
    # NaFlex only: the patch budget per frame (None = the checkpoint's image processor's, 256)
    max_num_patches: int | None = None
    device: str = "auto"
    autocast: Autocast = "auto"

    def __post_init__(self) -> None:
        if self.pool < 0:
            raise ValueError(f"encoder.pool must be >= 0, got {self.pool}")
        if self.max_num_patches is not None and self.max_num_patches < 1:
            raise ValueError(f"encoder.max_num_patches must be >= 1, got {self.max_num_patches}")


EncoderConfig = SiglipConfig | ClipConfig | Siglip2Config


class EncoderLoadError(RuntimeError):
    pass


HUB_OR_DIR = "<hub id or local directory with the checkpoint>"


def load_failed(what: str, err: BaseException, hub: str | None, hint: str) -> EncoderLoadError:
    """The one-line error for a checkpoint that would not load: what, the loader's reason (one
    line, at most 300 characters), why the hub was not used, and the setting to change."""
    reason = " ".join(str(err).split())[:300]
    return EncoderLoadError(
        f"cannot load {what}: {reason}{f' ({hub})' if hub else ''}. Set encoder.pretrained={hint}"
    )


HUB_PROBE_TIMEOUT_S = 5.0
_hub_status: dict[str, str | None] = {}


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub (``HF_ENDPOINT``) cannot be reached; ``None`` if it can.

    One quick request per endpoint and process: without it an unreachable hub costs about a
    minute of the hub client's timeouts and retries before a load fails.
    """
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if endpoint not in _hub_status:
        why: str | None = None
        try:
            req = urllib.request.Request(endpoint, method="HEAD")
            urllib.request.urlopen(req, timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # it answered
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            why = f"the hub {endpoint} is unreachable ({reason})"
        _hub_status[endpoint] = why
    return _hub_status[endpoint]


@contextmanager
def hub_access() -> Iterator[str | None]:
    """Hub downloads as usual, or only the local cache (at once) when the hub is unreachable.

    Yields why the hub is unreachable (for error messages), or ``None``.
    """
    from huggingface_hub import constants

    if constants.is_offline_mode():
        yield "offline mode is set (HF_HUB_OFFLINE): only the local cache is used"
        return
    why = hub_unreachable()
    if why is None:
        yield None
        return
    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # the hub client and transformers read this at call time
    try:
        yield f"{why}: only the local cache is used"
    finally:
        constants.HF_HUB_OFFLINE = saved


def pool_tokens(cls_token: torch.Tensor, patches: torch.Tensor, pool: int) -> torch.Tensor:
    """``[cls, k x k average-pooled patch grid]`` -> ``(B, 1 + k*k, C)``, grid cells row-major.

    ``patches`` is ``(B, G*G, C)`` in row-major grid order; ``0 <= pool <= G`` (``0`` keeps only
    CLS; ``G`` keeps every patch). When ``pool`` divides ``G`` each cell is the mean of a
    ``G/k x G/k`` block; otherwise cells follow ``adaptive_avg_pool2d``'s overlapping bins
    (``floor(i*G/k) .. ceil((i+1)*G/k)``), as the reference code does, e.g. 3x3 on ViT-B/16's 14x14.
    """
    b, n, c = patches.shape
    grid = math.isqrt(n)
    if pool == 0:
        return cls_token[:, None, :]
    if grid * grid != n:
        raise ValueError(f"patch tokens do not form a square grid: {n} tokens")
    return pool_grid(cls_token, patches, (grid, grid), pool)


def pool_grid(
    cls_token: torch.Tensor, patches: torch.Tensor, grid: tuple[int, int], pool: int
) -> torch.Tensor:
    """:func:`pool_tokens` over an ``H x W`` grid: ``patches`` ``(B, >= H*W, C)`` whose first
    ``H*W`` rows are the grid row-major (rows after them, padding, are ignored); the ``k x k``
    cells follow ``adaptive_avg_pool2d``'s bins along each axis; ``0 <= pool <= min(H, W)``."""
    b, n, c = patches.shape
    h, w = grid
    if pool == 0:
        return cls_token[:, None, :]
    if n < h * w:
        raise ValueError(f"{n} patch tokens for a {h}x{w} grid")
    if not 0 < pool <= min(h, w):
        divisors = [k for k in range(1, min(h, w) + 1) if h % k == 0 and w % k == 0]
        raise ValueError(
            f"encoder.pool={pool} does not fit the {h}x{w} patch grid; valid values: "
            f"0..{min(h, w)} (exact block means for common divisors of {h} and {w}: {divisors})"
        )
    x = patches[:, : h * w].reshape(b, h, w, c).permute(0, 3, 1, 2)
    x = torch.nn.functional.adaptive_avg_pool2d(x, pool)
    x = x.flatten(2).transpose(1, 2)  # (B, k*k, C), row by row
    return torch.cat([cls_token[:, None, :], x], dim=1)


class Encoder:
    """A loaded encoder: ``encode(uint8 (B, 3, S, S)) -> float32 (B, tokens, dim)``."""

    def __init__(
        self,
        *,
        forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        module: torch.nn.Module,
        image_size: int,
        dim: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        pool: int,
        device: torch.device,
        autocast: Autocast,
        provenance: dict[str, Any],
    ) -> None:
        self._forward = forward
        self.module = module.eval().requires_grad_(False).to(device)
        self.image_size = image_size
        self.dim = dim
        self.pool = pool
        self.tokens_per_frame = 1 + pool * pool
        self.device = device
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.autocast: str = resolve_autocast(autocast, device)
        self.provenance = provenance

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Tokens for uint8 frames already resized/padded to ``image_size``."""
        if pixels.dtype != torch.uint8 or pixels.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"expected uint8 (B, 3, {self.image_size}, {self.image_size}) frames, "
                f"got {pixels.dtype} {tuple(pixels.shape)}"
            )
        with torch.inference_mode():
            x = pixels.to(self.device, non_blocking=True).float().div_(255)
            x = (x - self.mean) / self.std
            with autocast_context(self.autocast, self.device):
                cls_token, patches = self._forward(x)
            return pool_tokens(cls_token.float(), patches.float(), self.pool)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _is_local(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists()


def _checkpoint_source(ref: str, what: str, example: str) -> tuple[bool, str]:
    """``(is local, what from_pretrained gets)`` for a hub id or a local directory."""
    if _is_local(ref) and not Path(ref).expanduser().is_dir():
        raise EncoderLoadError(
            f"encoder.pretrained={ref!r}: no such directory (a {what} checkpoint folder with "
            f"config.json, or a hub id like {example})"
        )
    local = _is_local(ref)
    return local, str(Path(ref).expanduser()) if local else ref


def build_siglip(cfg: SiglipConfig) -> Encoder:
    """Load a SigLIP vision tower from a hub id or local directory (full SigLIP or vision-only)."""
    from transformers import SiglipVisionModel

    ref = cfg.pretrained
    local, src = _checkpoint_source(ref, "SigLIP", "google/siglip-large-patch16-384")
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    with nullcontext() if local else hub_access() as hub:
        try:
            model = SiglipVisionModel.from_pretrained(src)
        except (OSError, ValueError) as e:
            raise load_failed(f"SigLIP weights {ref!r}", e, hub, HUB_OR_DIR) from None
        try:  # a saved image processor overrides the SigLIP defaults
            from transformers import AutoImageProcessor

            proc = AutoImageProcessor.from_pretrained(src)
            mean, std = tuple(proc.image_mean), tuple(proc.image_std)  # type: ignore[assignment]
        except Exception:  # noqa: BLE001 - no processor saved: the SigLIP defaults apply
            pass
    vcfg = model.config

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(pixel_values=x)
        return out.pooler_output, out.last_hidden_state

    return Encoder(
        forward=forward,
        module=model,
        image_size=int(vcfg.image_size),  # type: ignore[arg-type]
        dim=int(vcfg.hidden_size),
        mean=mean,
        std=std,
        pool=cfg.pool,
        device=_device(cfg.device),
        autocast=cfg.autocast,
        provenance={"weights": ref, "architecture": type(model).__name__},
    )


def build_clip(cfg: ClipConfig) -> Encoder:
    """Load an open_clip ViT; CLS and patch tokens are taken from ``ln_post``'s output."""
    import open_clip

    if cfg.model_config:
        path = Path(cfg.model_config).expanduser()
        if not path.exists():
            raise EncoderLoadError(f"encoder.model_config={cfg.model_config!r} does not exist")
        open_clip.add_model_config(path)
    name = cfg.model
    known = open_clip.list_models()
    if not name.startswith("hf-hub:") and name not in known:
        raise EncoderLoadError(
            f"encoder.model={name!r} is not an open_clip model; e.g. ViT-B-16, ViT-L-14-336 "
            f"(all: open_clip.list_models()), hf-hub:<org/repo>, or register a config with "
            f"encoder.model_config=<json>"
        )
    pretrained = cfg.pretrained
    if pretrained and _is_local(pretrained) and not Path(pretrained).expanduser().is_file():
        raise EncoderLoadError(f"encoder.pretrained={pretrained!r}: no such checkpoint file")
    local = not name.startswith("hf-hub:") and (not pretrained or _is_local(pretrained))
    with nullcontext() if local else hub_access() as hub:
        try:
            model = open_clip.create_model(
                name, pretrained=pretrained if not name.startswith("hf-hub:") else None
            )
        except Exception as e:  # noqa: BLE001 - open_clip raises many kinds for a bad tag or hub
            raise load_failed(
                f"open_clip {name!r} with pretrained={pretrained!r}",
                e,
                hub,
                "<tag, hf-hub id or local checkpoint file>",
            ) from None
    visual = model.visual
    if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "ln_post"):
        raise EncoderLoadError(f"open_clip model {name!r} has no class token to keep")
    if getattr(visual, "final_ln_after_pool", False):
        raise EncoderLoadError(f"open_clip model {name!r} normalises after pooling; unsupported")
    captured: dict[str, torch.Tensor] = {}
    visual.ln_post.register_forward_hook(lambda m, i, o: captured.__setitem__("x", o))

    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        visual(x)
        h = captured.pop("x")  # (B, 1 + G*G, C), class token first
        return h[:, 0], h[:, 1:]

    size = visual.image_size
    image_size = int(size[0] if isinstance(size, (tuple, list)) else size)  # type: ignore[call-overload,arg-type]
    return Encoder(
        forward=forward,
        module=visual,
        image_size=image_size,
        dim=int(visual.ln_post.normalized_shape[0]),
        mean=tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),  # type: ignore[arg-type]
        std=tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),  # type: ignore[arg-type]
        pool=cfg.pool,
        device=_device(cfg.device),
        autocast=cfg.autocast,
        provenance={"weights": pretrained or "random-init", "architecture": name},
    )


class NaflexEncoder(Encoder):
    """A SigLIP 2 NaFlex encoder: frames of any ``H x W`` (uint8 ``(B, 3, H, W)``) are resized
    by the checkpoint's image processor to a patch grid that keeps their aspect ratio within
    ``max_num_patches``; CLS = ``pooler_output``; the ``k x k`` cells pool the real grid only
    (docs/encoders.md)."""

    def __init__(self, *, processor: Any, max_num_patches: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.processor = processor
        self.max_num_patches = max_num_patches

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(
                f"expected uint8 (B, 3, H, W) frames, got {pixels.dtype} {tuple(pixels.shape)}"
            )
        inputs = self.processor(
            images=list(pixels.cpu()), max_num_patches=self.max_num_patches, return_tensors="pt"
        )
        shapes = inputs["spatial_shapes"]
        with torch.inference_mode():
            args = {k: v.to(self.device) for k, v in inputs.items()}
            with autocast_context(self.autocast, self.device):
                out = self.module(**args)
            cls_token, hidden = out.pooler_output.float(), out.last_hidden_state.float()
            rows = [
                pool_grid(cls_token[i : i + 1], hidden[i : i + 1], (int(h), int(w)), self.pool)
                for i, (h, w) in enumerate(shapes.tolist())
            ]
            return torch.cat(rows)


def build_siglip2(cfg: Siglip2Config) -> Encoder:
    """A SigLIP 2 checkpoint: fixed-resolution ones (``model_type`` siglip) load as SigLIP;
    NaFlex ones (siglip2) as :class:`NaflexEncoder`."""
    from transformers import AutoConfig

    ref = cfg.pretrained
    example = "google/siglip2-so400m-patch16-naflex"
    local, src = _checkpoint_source(ref, "SigLIP 2", example)
    with nullcontext() if local else hub_access() as hub:
        try:
            model_type = AutoConfig.from_pretrained(src).model_type
        except (OSError, ValueError) as e:
            raise load_failed(f"SigLIP 2 config {ref!r}", e, hub, HUB_OR_DIR) from None
    if model_type in ("siglip", "siglip_vision_model"):
        sig = SiglipConfig(pretrained=ref, pool=cfg.pool, device=cfg.device, autocast=cfg.autocast)
        return build_siglip(sig)
    if model_type not in ("siglip2", "siglip2_vision_model"):
        raise EncoderLoadError(
            f"encoder.pretrained={ref!r} is a {model_type!r} checkpoint, not SigLIP 2 (siglip or"
            " siglip2); use encoder=siglip or encoder=clip for other models"
        )
    return _build_naflex(cfg, src, local)


def _build_naflex(cfg: Siglip2Config, src: str, local: bool) -> Encoder:
    from transformers import Siglip2ImageProcessor, Siglip2VisionModel

    with nullcontext() if local else hub_access() as hub:
        try:
            model = Siglip2VisionModel.from_pretrained(src)
            processor = Siglip2ImageProcessor.from_pretrained(src)
        except (OSError, ValueError) as e:
            raise load_failed(
                f"SigLIP 2 NaFlex weights and image processor {cfg.pretrained!r}",
                e,
                hub,
                HUB_OR_DIR,
            ) from None
    budget = cfg.max_num_patches or int(processor.max_num_patches)
    patch = int(model.config.patch_size)  # type: ignore[arg-type]
    return NaflexEncoder(
        processor=processor,
        max_num_patches=budget,
        forward=lambda x: (x, x),  # unused: NaflexEncoder.encode runs the module itself
        module=model,
        # The square frame side whose grid fills the budget without resizing (stores' frames).
        image_size=patch * math.isqrt(budget),
        dim=int(model.config.hidden_size),
        mean=tuple(processor.image_mean),  # type: ignore[arg-type]
        std=tuple(processor.image_std),  # type: ignore[arg-type]
        pool=cfg.pool,
        device=_device(cfg.device),
        autocast=cfg.autocast,
        provenance={
            "weights": cfg.pretrained,
            "architecture": type(model).__name__,
            "max_num_patches": budget,
        },
    )


BUILDERS: dict[type, Callable[[Any], Encoder]] = {
    SiglipConfig: build_siglip,
    ClipConfig: build_clip,
    Siglip2Config: build_siglip2,
}


def build_encoder(cfg: EncoderConfig) -> Encoder:
    """Build the encoder a config describes (dispatch on the config's type)."""
    try:
        builder = BUILDERS[type(cfg)]
    except KeyError:
        raise TypeError(
            f"no encoder builder for {type(cfg).__name__}; valid: {[c.__name__ for c in BUILDERS]}"
        ) from None
    return builder(cfg)


def describe(cfg: EncoderConfig) -> dict[str, Any]:
    """The config as a plain dict (what the store records as the features' identity)."""
    d = asdict(cfg)
    d.pop("device", None)  # where it ran does not change what the features mean
    d["type"] = type(cfg).__name__
    return d
