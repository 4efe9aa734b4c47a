"""``write_report``: every static figure of a fit plus the offline inspector page."""

from __future__ import annotations

from pathlib import Path

from ._figures import plot_loss, plot_posterior_pairs, plot_sources
from ._html import save_inspector_html
from ._static import plot_observation
from ._tree import check_tree, observation_names, posterior_dataset

__all__ = ["write_report"]


def write_report(tree, directory, *, html: bool = True, max_sources: int = 20) -> list[Path]:
    """Write the figures of a fit and its inspector page into a directory.

    Files written (the directory is created if needed):

    - ``<observation>_data_model_residual.png`` for each observation,
    - ``sources.png`` (data around each source, its model alone, its spectrum),
    - ``loss.png`` when the tree has a loss history,
    - ``posterior_pairs.png`` when the tree has ``/posterior`` ``flux`` draws
      (the brightest source's fluxes),
    - ``catalog.html`` and ``catalog.ecsv``: the source catalog (with units)
      when the tree has measurements,
    - ``inspector.html``: the self-contained, offline inspector.

    Parameters
    ----------
    tree : xarray.DataTree
        A results tree.
    directory : str or Path
        Output directory.
    html : bool
        Also write ``inspector.html``.
    max_sources : int
        Sources shown in ``sources.png``.

    Returns
    -------
    list of Path
        The files written.
    """
    check_tree(tree)
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ValueError(f"report directory {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in observation_names(tree):
        written.append(plot_observation(tree, name, out / f"{name}_data_model_residual.png"))
    written.append(plot_sources(tree, out / "sources.png", max_sources=max_sources))
    if "fit" in tree.children and tree["fit"]["loss"].size:
        written.append(plot_loss(tree, out / "loss.png"))
    post = posterior_dataset(tree)
    if post is not None and "flux" in post:
        mean_flux = post["flux"].mean(("chain", "draw")).sum("band")
        brightest = int(mean_flux.argmax("source"))
        written.append(plot_posterior_pairs(tree, out / "posterior_pairs.png",
                                            coords={"source": brightest}))
    if "flags" in tree["sources"].to_dataset():
        from ..xr import catalog_from_tree, write_catalog

        table = catalog_from_tree(tree)
        written.append(write_catalog(table, out / "catalog.ecsv"))
        table.write(out / "catalog.html", format="ascii.html", overwrite=True)
        written.append(out / "catalog.html")
    if html:
        written.append(save_inspector_html(tree, out / "inspector.html"))
    return written
