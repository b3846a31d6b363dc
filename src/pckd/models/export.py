"""``pckd export``: a checkpoint's weights as a ``.safetensors`` file, written atomically and never over
anything but a regular file that is not the input."""

from __future__ import annotations

import os
from pathlib import Path

from pckd.errors import UserError, WriteFailed
from pckd.models.checkpoint import extract_state_dict, read_checkpoint


def check_export_target(checkpoint_path: Path, out_path: Path) -> None:
    """Refuse an output that is not ``*.safetensors``, that exists but is not a regular file (a device such as
    /dev/null, a folder, a link) or that is the input itself; create its missing parent folders."""
    if out_path.suffix != ".safetensors":
        raise UserError(f"export: output '{out_path}' must end in .safetensors (e.g. {out_path.stem}.safetensors)")
    if os.path.lexists(out_path):
        if out_path.is_symlink() or not out_path.is_file():
            kind = "a link" if out_path.is_symlink() else "a folder" if out_path.is_dir() else "not a regular file"
            raise UserError(f"export: output '{out_path}' exists and is {kind}; give the path of a new .safetensors "
                            "file")
        if checkpoint_path.exists() and os.path.samefile(checkpoint_path, out_path):
            raise UserError(f"export: output '{out_path}' is the input checkpoint; give another output path")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"export: cannot create folder '{out_path.parent}': a file is in the way") from None
    except OSError as exc:
        raise WriteFailed(f"export: cannot create folder '{out_path.parent}' ({exc.strerror or exc})") from None


def export_safetensors(
    checkpoint_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    trust: bool = False,
    key_name: str = "checkpoint",
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the model weights of a checkpoint to a ``.safetensors`` file (mode 0644, ``metadata`` in its
    header) and return its path."""
    try:
        from safetensors.torch import save
    except ImportError:
        raise UserError("exporting to safetensors needs the safetensors package: pip install safetensors") from None
    checkpoint_path, out_path = Path(checkpoint_path), Path(out_path)
    check_export_target(checkpoint_path, out_path)
    state = extract_state_dict(read_checkpoint(checkpoint_path, trust=trust, key_name=key_name), str(checkpoint_path))
    # safetensors refuses tensors that share storage (tied weights): give each its own contiguous copy.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    data = save(tensors, metadata={"format": "pt", "source": checkpoint_path.name, **(metadata or {})})
    try:  # atomic: a crash or a full disk never leaves a half-written export behind
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # a model file to share: readable by others whatever the umask
        os.replace(tmp, out_path)
    except OSError as exc:
        raise WriteFailed(f"could not write '{out_path}' ({exc.strerror or exc}); nothing was written") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return out_path


__all__ = ["check_export_target", "export_safetensors"]
