"""Fine-tuning commands: `argosy dataset upload|ls|show|preview` and
`argosy train BASE_MODEL --dataset D ...` / `argosy train ls|show|stop|resume|rerun|report|logs`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from typer.core import TyperGroup

from argosy.cli.connect import connect
from argosy.cli.output import OUTPUT_OPTION, ago, check_format, emit_json, money, table
from argosy.client import ArgosyClient
from argosy.core.errors import ArgosyError, ServerUnreachableError
from argosy.core.sse import sse_events

err = Console(stderr=True, soft_wrap=True)
UPLOAD_CHUNK = 1 << 20
TERMINAL = ("succeeded", "failed", "cancelled")


class _TrainGroup(TyperGroup):
    """`argosy train BASE_MODEL ...` starts a job; `argosy train ls` etc. are subcommands."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["start", *args]
        return super().parse_args(ctx, args)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while block := f.read(UPLOAD_CHUNK):
            yield block


def _upload(client: ArgosyClient, path: Path, name: str | None) -> dict[str, Any]:
    if not path.is_file():
        raise ArgosyError(f"{path} is not a file", fix="pass the path of a .jsonl (or plain text) dataset")
    params = {"name": name} if name else {}
    headers = {"Content-Type": "application/octet-stream"}
    return dict(
        client.request("POST", "/train/datasets", content=_file_chunks(path), params=params, headers=headers)
    )


def _params(**kw: Any) -> dict[str, Any]:
    """Only the options given: the trainer's defaults apply to the rest."""
    out = {k: v for k, v in kw.items() if v is not None}
    if isinstance(out.get("target_modules"), str):
        out["target_modules"] = [m.strip() for m in out["target_modules"].split(",") if m.strip()]
    return out


def _sse(client: ArgosyClient, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    return sse_events(client.stream_lines("GET", path))


def _follow(client: ArgosyClient, job_id: str) -> dict[str, Any]:
    """A progress bar with live loss until the job ends; the final job description."""
    last: dict[str, Any] = {}
    cols = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*cols, console=err, transient=False) as bar:
        task = bar.add_task(job_id, total=None, info="queued")
        try:
            for kind, data in _sse(client, f"/train/jobs/{job_id}/events"):
                if kind == "event":
                    bar.console.print(
                        f"[dim]{escape(data['to'])}: {escape(data['reason'])}[/]", highlight=False
                    )
                elif kind == "metric":
                    loss = data.get("loss")
                    info = f"loss {loss:.4f}" if isinstance(loss, int | float) else ""
                    if data.get("eval_loss") is not None:
                        info += f"  eval {data['eval_loss']:.4f}"
                    if data.get("tokens_per_s"):
                        info += f"  {data['tokens_per_s']:.0f} tok/s"
                    if data.get("co2_kg") is not None:
                        info += f"  {data['co2_kg'] * 1000:.3f} gCO2e"
                    bar.update(task, completed=data["step"], info=info)
                elif kind == "state":
                    last = data
                    p = data["progress"]
                    if p.get("total_steps"):
                        bar.update(task, total=p["total_steps"])
                    if data["state"] not in ("running",):
                        bar.update(task, info=data["state"])
                elif kind == "end":
                    break
        except ServerUnreachableError:
            raise
    return last or dict(client.request("GET", f"/train/jobs/{job_id}"))


def _finish(client: ArgosyClient, job: dict[str, Any], wait: bool, output: str) -> None:
    if wait:
        job = _follow(client, job["id"])
        job = dict(client.request("GET", f"/train/jobs/{job['id']}"))
    if output == "json":
        emit_json(job)
    if not wait:
        if output != "json":
            err.print(
                f"queued [bold]{job['id']}[/] ({job['name']}) on {job['offering'].get('key')}; "
                f"follow it: argosy train show {job['id']}",
                highlight=False,
            )
        return
    if job["state"] == "succeeded":
        if output != "json":
            m = job.get("model") or {}
            err.print(
                f"[green]succeeded[/]: {escape(job['reason'])}\n  report: argosy train report {job['id']}",
                highlight=False,
            )
            if m:
                err.print(f"  deploy: argosy deploy {m['name']}", highlight=False)
        return
    raise ArgosyError(
        f"job {job['id']} {job['state']}: {job['reason']}",
        fix=(job.get("error") or {}).get("fix")
        or f"see `argosy train logs {job['id']}`; then `argosy train resume {job['id']}`",
    )


def register(app: typer.Typer) -> None:
    ds = typer.Typer(help="Fine-tuning datasets: upload, list, stats, preview.", no_args_is_help=True)

    @ds.command("upload")
    def ds_upload(
        path: Path = typer.Argument(
            ..., help="A JSONL file (chat, instruction, completion, text) or plain text."
        ),
        name: str = typer.Option(None, "--name", "-n", help="A name to find it by."),
        output: str = OUTPUT_OPTION,
    ) -> None:
        """Upload (streamed, size-capped) and validate a dataset; it is stored by its sha256."""
        check_format(output)
        res = _upload(connect(err), path, name)
        if output == "json":
            emit_json(res)
            return
        err.print(
            f"stored [bold]{res['digest'][:12]}[/] ({res['format']}, {res['rows']} rows, {res['tokens']} "
            f"{res['tokens_counted_with']}); use it: argosy train MODEL --dataset {res['digest'][:12]}",
            highlight=False,
        )

    @ds.command("ls")
    def ds_ls(output: str = OUTPUT_OPTION) -> None:
        """List uploaded datasets."""
        check_format(output)
        rows = list(connect(err).request("GET", "/train/datasets"))
        if output == "json":
            emit_json(rows)
            return
        table(
            None,
            ["digest", "name", "format", "rows", "bytes", "uploaded"],
            [
                [
                    r["digest"][:12],
                    r.get("name") or "-",
                    r.get("format"),
                    r.get("rows"),
                    r.get("bytes"),
                    ago(r.get("uploaded_at")),
                ]
                for r in rows
            ],
        )

    @ds.command("show")
    def ds_show(
        ref: str = typer.Argument(..., help="Digest (prefix) or name."),
        model: str = typer.Option(None, "--model", help="Count tokens with this model's tokenizer."),
        output: str = OUTPUT_OPTION,
    ) -> None:
        """A dataset's stats: rows, tokens, length histogram."""
        check_format(output)
        params = {"model": str(Path(model).expanduser().resolve())} if model else {}
        st = dict(connect(err).request("GET", f"/train/datasets/{ref}", params=params))
        if output == "json":
            emit_json(st)
            return
        err.print(
            f"[bold]{st['digest'][:12]}[/] {st.get('name') or ''} — {st['format']}, {st['rows']} rows, "
            f"{st['bytes']} bytes, {st['tokens']} tokens ({st['tokens_counted_with']})",
            highlight=False,
        )
        table("length histogram", ["tokens", "rows"], [[k, v] for k, v in st["histogram"].items()])

    @ds.command("preview")
    def ds_preview(
        ref: str, n: int = typer.Option(5, "-n", min=1, max=100), output: str = OUTPUT_OPTION
    ) -> None:
        """The first N examples, as the trainer sees them."""
        check_format(output)
        res = dict(connect(err).request("GET", f"/train/datasets/{ref}/preview", params={"n": n}))
        if output == "json":
            emit_json(res)
            return
        for i, text in enumerate(res["rows"], 1):
            typer.echo(f"--- {i}\n{text}")

    app.add_typer(ds, name="dataset")

    train = typer.Typer(
        cls=_TrainGroup,
        help="Fine-tune a model: `argosy train BASE_MODEL --dataset D`; or ls, show, stop, resume, rerun, report, logs.",
        no_args_is_help=True,
    )

    @train.command(
        "start", help="Fine-tune BASE_MODEL on a dataset (the default: `argosy train BASE_MODEL ...`)."
    )
    def start(
        base_model: str = typer.Argument(..., help="A local Hugging Face model directory."),
        dataset: str = typer.Option(
            ..., "--dataset", "-d", help="Dataset digest/name, or a file to upload first."
        ),
        method: str = typer.Option(None, "--method", help="lora (default), qlora (GPU) or full."),
        lora_r: int = typer.Option(None, "--lora-r"),
        lora_alpha: int = typer.Option(None, "--lora-alpha"),
        lora_dropout: float = typer.Option(None, "--lora-dropout"),
        target_modules: str = typer.Option(None, "--target-modules", help="Comma-separated module names."),
        epochs: float = typer.Option(None, "--epochs"),
        max_steps: int = typer.Option(None, "--max-steps"),
        lr: float = typer.Option(None, "--lr"),
        batch_size: int = typer.Option(None, "--batch-size"),
        grad_accum: int = typer.Option(None, "--grad-accum"),
        max_seq_len: int = typer.Option(None, "--max-seq-len"),
        eval_every: int = typer.Option(None, "--eval-every"),
        save_every: int = typer.Option(None, "--save-every"),
        seed: int = typer.Option(None, "--seed"),
        gpu: str = typer.Option(None, "--gpu", help="GPU type to train on."),
        provider: str = typer.Option(
            None, "--provider", "-p", help="Where to run (default: placement chooses)."
        ),
        priority: int = typer.Option(0, "--priority", help="Higher runs first; FIFO within a priority."),
        name: str = typer.Option(
            None, "--name", "-n", help="Name of the resulting model (for `argosy deploy`)."
        ),
        share_node: bool = typer.Option(
            False, "--share-node", help="May run beside other sharing jobs on one GPU/node."
        ),
        node: str = typer.Option(
            None,
            "--node",
            help="Run on this node (name or id), e.g. a machine enrolled with `argosy agent`; "
            "inputs are shipped to it and the output comes back.",
        ),
        wait: bool = typer.Option(
            False, "--wait", help="Follow the job to its end; exit non-zero if it fails."
        ),
        output: str = OUTPUT_OPTION,
    ) -> None:
        check_format(output)
        client = connect(err)
        ds_ref = dataset
        p = Path(dataset).expanduser()
        if p.is_file():
            res = _upload(client, p, None)
            ds_ref = res["digest"]
            if output != "json":
                err.print(f"uploaded {p.name} as {res['digest'][:12]} ({res['rows']} rows)", highlight=False)
        looks_local = base_model.startswith((".", "/", "~")) or Path(base_model).expanduser().exists()
        body = {
            "base_model": str(Path(base_model).expanduser().resolve()) if looks_local else base_model,
            "dataset": ds_ref,
            "params": _params(
                method=method,
                lora_r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                target_modules=target_modules,
                epochs=epochs,
                max_steps=max_steps,
                lr=lr,
                batch_size=batch_size,
                grad_accum=grad_accum,
                max_seq_len=max_seq_len,
                eval_every=eval_every,
                save_every=save_every,
                seed=seed,
            ),
            "name": name,
            "provider": provider,
            "gpu": gpu,
            "priority": priority,
            "share_node": share_node,
            "node": node,
        }
        job = dict(client.request("POST", "/train/jobs", json=body))
        if output != "json":
            for line in job.get("placement") or []:
                err.print(escape(line), highlight=False)
            err.print(
                f"job [bold]{job['id']}[/]: {job['method']} of {Path(job['base_model']).name} on "
                f"{job['offering'].get('key')} (~{job['memory_gb']:.1f} GB; {money(job['offering'].get('price_per_hour'))}/h)",
                highlight=False,
            )
        _finish(client, job, wait, output)

    @train.command("ls")
    def ls(
        active: bool = typer.Option(False, "--active", help="Only unfinished jobs."),
        output: str = OUTPUT_OPTION,
    ) -> None:
        """List training jobs."""
        check_format(output)
        rows = list(connect(err).request("GET", "/train/jobs", params={"active": active}))
        if output == "json":
            emit_json(rows)
            return
        table(
            None,
            ["id", "name", "state", "step", "loss", "method", "where", "created", "cost"],
            [
                [
                    j["id"],
                    j["name"],
                    j["state"],
                    f"{j['progress']['step'] or 0}/{j['progress']['total_steps'] or '?'}",
                    f"{j['progress']['loss']:.4f}" if j["progress"]["loss"] is not None else "-",
                    j["method"],
                    j["offering"].get("key"),
                    ago(j["created_at"]),
                    money(j["cost"]["cost_usd"]),
                ]
                for j in rows
            ],
        )

    @train.command("show")
    def show(job_id: str, output: str = OUTPUT_OPTION) -> None:
        """One job: state, progress, parameters, carbon settings and its events."""
        check_format(output)
        client = connect(err)
        j = dict(client.request("GET", f"/train/jobs/{job_id}"))
        if output == "json":
            j["metrics"] = client.request("GET", f"/train/jobs/{job_id}/metrics")
            emit_json(j)
            return
        p = j["progress"]
        err.print(
            f"[bold]{j['id']}[/] ({j['name']}) {j['state']} — {escape(j['reason'])}\n"
            f"  {j['method']} of {j['base_model']} on {j['offering'].get('key')}, attempt {j['attempt']}, "
            f"crashes {j['crashes']}/{j['max_attempts']}\n"
            f"  step {p['step'] or 0}/{p['total_steps'] or '?'}  loss {p['loss']}  eval {p['eval_loss']}  "
            f"checkpoint {p['checkpoint']}  energy {p['energy_kwh']} kWh  CO2e {p['co2_kg']} kg\n"
            f"  carbon: {j['carbon']['carbon_intensity_g_per_kwh']} g/kWh ({escape(str(j['carbon']['carbon_source']))})\n"
            f"  params: {json.dumps(j['params'])}",
            highlight=False,
        )
        if j.get("model"):
            err.print(
                f"  model: {j['model']['name']} ({j['model']['kind']}) at {j['model']['path']}",
                highlight=False,
            )
        table(
            "events",
            ["when", "change", "reason"],
            [[ago(e["ts"]), f"{e['from'] or ''} → {e['to']}", e["reason"][:120]] for e in j["events"][-15:]],
        )

    @train.command("stop")
    def stop(job_id: str, output: str = OUTPUT_OPTION) -> None:
        """Stop a job (its checkpoints are kept: `argosy train resume` continues)."""
        check_format(output)
        j = dict(connect(err).request("POST", f"/train/jobs/{job_id}/cancel"))
        emit_json(j) if output == "json" else err.print(
            f"{j['id']}: {j['state']} — {escape(j['reason'])}", highlight=False
        )

    @train.command("resume")
    def resume(job_id: str, wait: bool = typer.Option(False, "--wait"), output: str = OUTPUT_OPTION) -> None:
        """Queue a stopped or failed job again; it resumes from its newest checkpoint."""
        check_format(output)
        client = connect(err)
        _finish(client, dict(client.request("POST", f"/train/jobs/{job_id}/resume")), wait, output)

    @train.command("rerun")
    def rerun(
        job_id: str,
        method: str = typer.Option(None, "--method"),
        lora_r: int = typer.Option(None, "--lora-r"),
        lora_alpha: int = typer.Option(None, "--lora-alpha"),
        lora_dropout: float = typer.Option(None, "--lora-dropout"),
        target_modules: str = typer.Option(None, "--target-modules"),
        epochs: float = typer.Option(None, "--epochs"),
        max_steps: int = typer.Option(None, "--max-steps"),
        lr: float = typer.Option(None, "--lr"),
        batch_size: int = typer.Option(None, "--batch-size"),
        grad_accum: int = typer.Option(None, "--grad-accum"),
        max_seq_len: int = typer.Option(None, "--max-seq-len"),
        eval_every: int = typer.Option(None, "--eval-every"),
        save_every: int = typer.Option(None, "--save-every"),
        seed: int = typer.Option(None, "--seed"),
        name: str = typer.Option(None, "--name", "-n"),
        priority: int = typer.Option(None, "--priority"),
        wait: bool = typer.Option(False, "--wait"),
        output: str = OUTPUT_OPTION,
    ) -> None:
        """Train again with the same model and data, changing the parameters given."""
        check_format(output)
        client = connect(err)
        changes = _params(
            method=method, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            target_modules=target_modules, epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
            grad_accum=grad_accum, max_seq_len=max_seq_len, eval_every=eval_every, save_every=save_every, seed=seed,
        )  # fmt: skip
        body = {"params": changes, "name": name, "priority": priority}
        _finish(client, dict(client.request("POST", f"/train/jobs/{job_id}/rerun", json=body)), wait, output)

    @train.command("report")
    def report(job_id: str, output: str = OUTPUT_OPTION) -> None:
        """Energy (CPU/GPU/RAM), kg CO2e with equivalents and their sources, and cost from the ledger."""
        check_format(output)
        r = dict(connect(err).request("GET", f"/train/jobs/{job_id}/report"))
        if output == "json":
            emit_json(r)
            return
        e = r.get("emissions")
        err.print(
            f"[bold]{r['job_id']}[/] ({r['name']}) {r['state']} — {r['steps']} steps, loss {r['first_loss']} → {r['final_loss']}",
            highlight=False,
        )
        if e:
            kinds = ", ".join(
                f"{k.split('_')[0].upper()} {e[k]:.6f}"
                for k in ("cpu_kwh", "gpu_kwh", "ram_kwh")
                if e.get(k) is not None
            )
            err.print(
                f"  energy {e.get('energy_kwh', 0):.6f} kWh ({kinds}); {e.get('co2_kg', 0) * 1000:.4f} gCO2e at "
                f"{e.get('intensity_g_per_kwh')} g/kWh ({escape(str(e.get('intensity_source')))}); "
                f"{'measured' if e.get('measured') else 'estimated'} by {e.get('method')}",
                highlight=False,
            )
            for note in e.get("notes") or []:
                err.print(f"  note: {escape(str(note))}", highlight=False)
            eq = e.get("equivalents") or []
            if eq:
                table(
                    "equivalents",
                    ["equals", "amount", "factor source"],
                    [
                        [q["name"], f"{q['value']:.6g} {q['unit']}", f"{q['source']} ({q['as_of']})"]
                        for q in eq
                    ],
                )
        else:
            err.print("  no emissions recorded yet")
        c = r["cost"]
        err.print(
            f"  cost {money(c['cost_usd'])} for {c['seconds'] / 3600:.4f} node-hours at {money(c['price_per_hour'])}/h ({c['source']})",
            highlight=False,
        )

    @train.command("logs")
    def logs(job_id: str, tail: int = typer.Option(200, "--tail")) -> None:
        """The trainer's output (shipped by the node's agent)."""
        for line in connect(err).stream_lines("GET", f"/train/jobs/{job_id}/logs", params={"tail": tail}):
            typer.echo(line)

    app.add_typer(train, name="train")
