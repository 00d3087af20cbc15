"""`vrclip-edge gallery ...`: list, inspect, rename, delete, export and import enrolled identities.

Safe while the service runs: the gallery is SQLite in WAL mode, so these commands read a consistent
snapshot and their writes are single transactions; the running matcher picks changes up at the next
frame. Errors are GalleryError (a UserError) and the top-level CLI prints them as one line.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import typer
from vrclip.edge.gallery.store import GalleryStore
from vrclip.edge.gallery.transfer import export_gallery, import_gallery

gallery_app = typer.Typer(
    name="gallery",
    help="Enrolled identities: list, show, rename, delete, export, import.",
    no_args_is_help=True,
    add_completion=False,
)


def _iso(t_ns: int) -> str:
    return dt.datetime.fromtimestamp(t_ns / 1e9, tz=dt.UTC).isoformat(timespec="seconds")


@gallery_app.callback()
def _gallery_root(
    ctx: typer.Context,
    db: Path | None = typer.Option(None, "--db", help="Gallery database (default: config gallery.path)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="Config TOML (default: built-ins)."),
) -> None:
    if db is None:
        from vrclip.edge.config import load_config

        db = Path(load_config(config).gallery.path)
    ctx.obj = db


def _open(ctx: typer.Context, *, create: bool = False) -> GalleryStore:
    return GalleryStore(ctx.obj, create=create)


@gallery_app.command("list")
def gallery_list(ctx: typer.Context) -> None:
    """One line per identity: name, exemplar count, last change."""
    with _open(ctx) as store:
        infos = store.identities()
        dim = store.dim
    if not infos:
        typer.echo(f"{ctx.obj}: no identities enrolled")
        return
    width = max(len(info.name) for info in infos)
    for info in infos:
        typer.echo(f"{info.name:<{width}}  {info.exemplars:4d} exemplars  updated {_iso(info.updated_ns)}")
    typer.echo(f"{len(infos)} identities, {sum(i.exemplars for i in infos)} exemplars, dim {dim}")


@gallery_app.command("show")
def gallery_show(ctx: typer.Context, name: str = typer.Argument(..., help="Identity name.")) -> None:
    """Details of one identity, with how distinct its exemplars are and how close the nearest other one is."""
    with _open(ctx) as store:
        info = store.info(name)
        mine = store.exemplars(name)
        sources = store.exemplar_sources(name)
        snap = store.snapshot()
    typer.echo(f"name:       {info.name}")
    origin = ", ".join(f"{sources.count(s)} {s}" for s in sorted(set(sources)))
    typer.echo(f"exemplars:  {info.exemplars}" + (f" ({origin})" if origin else ""))
    typer.echo(f"created:    {_iso(info.created_ns)}")
    typer.echo(f"updated:    {_iso(info.updated_ns)}")
    if len(mine) > 1:
        sims = mine @ mine.T
        off = sims[~np.eye(len(mine), dtype=bool)]
        typer.echo(f"self-cosine: mean {off.mean():.3f}, min {off.min():.3f} (lower = more varied views)")
    if len(mine) and any(n != name for n in snap.names):
        per_identity = np.maximum.reduceat(mine @ snap.matrix.T, snap.starts, axis=1).max(axis=0)
        ranked = sorted(
            ((float(per_identity[i]), n) for i, n in enumerate(snap.names) if n != name), reverse=True
        )
        score, closest = ranked[0]
        typer.echo(f"closest other identity: {closest} (cosine {score:.3f})")


@gallery_app.command("rename")
def gallery_rename(
    ctx: typer.Context,
    old: str = typer.Argument(..., help="Current name."),
    new: str = typer.Argument(..., help="New name."),
) -> None:
    """Rename an identity (its exemplars stay)."""
    with _open(ctx) as store:
        store.rename(old, new)
    typer.echo(f"renamed {old!r} to {new!r}")


@gallery_app.command("delete")
def gallery_delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Identity to delete."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete an identity and all its exemplars."""
    with _open(ctx) as store:
        info = store.info(name)
        if not yes:
            typer.confirm(f"delete {name!r} and its {info.exemplars} exemplars from {ctx.obj}?", abort=True)
        removed = store.delete(name)
    typer.echo(f"deleted {name!r} ({removed} exemplars)")


@gallery_app.command("export")
def gallery_export(
    ctx: typer.Context, file: Path = typer.Argument(..., help="Output file: .json or .npz.")
) -> None:
    """Write every identity and its exemplars to a JSON or npz file."""
    with _open(ctx) as store:
        count = export_gallery(store, file)
    typer.echo(f"exported {count} identities to {file}")


@gallery_app.command("import")
def gallery_import(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="A file written by `gallery export` (.json or .npz)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace identities that already exist."),
) -> None:
    """Import identities from an export file (all or nothing); creates the gallery if needed."""
    db: Path = ctx.obj
    existed = db.exists()
    try:
        with _open(ctx, create=True) as store:
            count = import_gallery(store, file, overwrite=overwrite)
    except BaseException:
        if not existed:  # a failed import must not leave an empty gallery behind
            for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                leftover.unlink(missing_ok=True)
        raise
    typer.echo(f"imported {count} identities into {ctx.obj}")
