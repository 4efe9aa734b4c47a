"""CLI helpers for the science products: catalog and deblended-image options, catalog summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["parse_zero_points", "check_products", "format_catalog"]


def parse_zero_points(text):
    """``--zero-point`` as a number or ``{band: zp}``; None when not given.

    Raises
    ------
    ValueError
        Text that is neither a number nor ``band=number`` pairs.
    """
    if text is None:
        return None
    text = str(text).strip()
    try:
        return float(text)
    except ValueError:
        pass
    out = {}
    for part in text.split(","):
        band, sep, value = part.partition("=")
        try:
            if not sep or not band.strip():
                raise ValueError
            out[band.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"--zero-point must be a number or band=number pairs (e.g. g=27,r=27.1); got {text!r}"
            ) from None
    return out


def check_products(args) -> None:
    """Refuse product paths that cannot be written, before any fitting.

    Raises
    ------
    ValueError
        A catalog path without .ecsv/.fits, or a directory that does not
        exist for it; a ``--deblended`` path that is an existing file.
    """
    cat = getattr(args, "catalog", None)
    if cat is not None:
        path = Path(cat)
        if path.suffix.lower() not in (".ecsv", ".fits", ".fit"):
            raise ValueError(f"--catalog must end in .ecsv or .fits; got {path.name!r}")
        if not path.parent.exists():
            raise ValueError(f"--catalog: directory {str(path.parent)!r} does not exist")
    deb = getattr(args, "deblended", None)
    if deb is not None and Path(deb).exists() and not Path(deb).is_dir():
        raise ValueError(f"--deblended must be a directory; {deb!r} is an existing file")
    parse_zero_points(getattr(args, "zero_point", None))


def format_catalog(table, max_rows: int = 50) -> str:
    """The catalog's main columns as text: position, size, shape, S/N, flags."""
    bands = list(table.meta.get("bands", []))
    ref = bands[len(bands) // 2] if bands else None
    cols = [("id", "{:>4d}", 4), ("kind", "{:>7s}", 7)]
    if "ra" in table.colnames:
        cols += [("ra", "{:11.6f}", 11), ("dec", "{:10.6f}", 10)]
    cols += [("x", "{:7.2f}", 7), ("y", "{:7.2f}", 7), ("r_half", "{:7.3f}", 7), ("e1", "{:6.2f}", 6),
             ("e2", "{:6.2f}", 6), ("blendedness", "{:5.2f}", 5)]
    if ref is not None:
        key = f"mag_{ref}" if f"mag_{ref}" in table.colnames else f"flux_{ref}"
        cols += [(key, "{:10.4g}", 10), (f"snr_{ref}", "{:7.1f}", 7)]
    cols += [("flags", "{:>5d}", 5)]
    head = " ".join(f"{(n if n != 'blendedness' else 'blend'):>{w}}" for n, _, w in cols)
    lines = ["catalog (main columns; all in the --catalog file / tree.scarlet.catalog()):", head]
    for row in table[:max_rows]:
        cells = []
        for n, fmt, w in cols:
            v = row[n]
            if isinstance(v, (float, np.floating)) and not np.isfinite(v):
                cells.append(f"{'nan':>{w}}")
            else:
                cells.append(fmt.format(int(v) if "d}" in fmt else (str(v) if "s}" in fmt else float(v))))
        lines.append(" ".join(cells))
    if len(table) > max_rows:
        lines.append(f"... {len(table) - max_rows} more rows")
    return "\n".join(lines)
