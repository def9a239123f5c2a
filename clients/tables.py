"""What the commands print: each result of a workflow as a few lines of text (pure formatting, no I/O).

Kept apart from the commands so the demo prints exactly what the single commands print.
"""

from __future__ import annotations


def training(res) -> str:
    m = res.metrics
    knn = f", holdout kNN {m['holdout_knn']:.4f}" if "holdout_knn" in m else ""
    return (f"trained {res.steps} steps in {m['train_minutes']} min ({m['images_per_s']} img/s{precision(m)}), "
            f"final loss {m['final_loss']:.4f}{knn}\nencoder: {res.encoder_path}\ncheckpoint: {res.checkpoint_path}")


def precision(metrics: dict) -> str:
    """``, fp32 + channels_last (measured)`` — what the run trained in, from its own record."""
    p = metrics.get("precision") or {}
    if not p:
        return ""
    how = "measured" if p.get("images_per_s") else "as configured"
    return f", {p['precision']}{' + channels_last' if p.get('channels_last') else ''} ({how})"


def _pct(scores: dict, metric: str) -> str:
    """``83.78 ± 0.37`` (percent, with its standard error)."""
    return f"{100 * scores[metric]:.2f} ± {100 * scores['se'][metric]:.2f}"


def protocol(s: dict) -> str:
    name = "standard protocol" if s["protocol"] == "standard" else "SUBSET (not the standard protocol)"
    return (f"{name}: {s['n_train']} train images as the bank / probe set, {s['n_test']} test images as queries, "
            f"weighted kNN (T={s['temperature']})")


def evaluation(report: dict) -> str:
    """The quality table: rows kNN@20, kNN@200, linear probe (percent ± standard error); columns raw pixels,
    random init, trained."""
    s = report["settings"]
    cols = [c for c in ("raw_pixels", "random_init", "trained") if c in report]
    rows = [(f"kNN@{s['k'][0]}", "knn"), (f"kNN@{s['k'][1]}", f"knn_{s['k'][1]}"), ("linear probe", "probe")]
    lines = [f"{'%':<14}" + "".join(f"{c:>17}" for c in cols)]
    for name, metric in rows:
        if metric in report["trained"]:
            lines.append(f"{name:<14}" + "".join(f"{_pct(report[c], metric):>17}" for c in cols))
    if "probe" in report["trained"]:
        lines.append(f"{'probe iters':<14}" + "".join(
            f"{report[c]['probe_iterations']:>16}{'' if report[c]['probe_converged'] else '!'}" for c in cols))
    lines.append(f"{'dim':<14}" + "".join(f"{report[c]['dim']:>17}" for c in cols))
    lines.append(f"({protocol(s)}; {s['seconds']} s)")
    return "\n".join(lines)


def export(result: dict) -> str:
    manifest, tag = result["manifest"], result["tag"]
    s = manifest.input_size
    lines = [f"version    {manifest.version}", f"dim        {manifest.embedding_dim}  (input uint8 [N, {s}, {s}, 3])"]
    for name, fig in manifest.parity.items():
        lines.append(f"parity     {name}: max |ONNX - PyTorch| {fig['max_abs_diff']:.2e}, min cosine "
                     f"{fig['min_cosine']:.6f}, batch 1 vs {fig['n_images']} diff "
                     f"{fig['batch_1_vs_n_max_abs_diff']:.1e} ({fig['images']})")
    if result["bundle"] is not None:
        lines.append(f"bundle     {result['bundle']}")
    lines.append(f"tag        {tag}" if tag else "tag        (not registered: --no-register)")
    return "\n".join(lines)


def _tuning(t: dict | None) -> str:
    """How the approximate index's search parameter was chosen (exact indexes have nothing to tune)."""
    if not t:
        return ""
    verdict = "reached" if t["reached"] else "NOT reached (best value kept)"
    return (f"; {t['param']} {t['value']}: recall@{t['k']} {t['recall']:.3f} on {t['queries']} held-out queries, "
            f"target {t['target']} {verdict}")


def index_build(r: dict) -> str:
    head = (f"indexed {r['size']} images with encoder {r['version']} ({r['factory']}, dim {r['dim']}) at {r['path']}"
            f"{_tuning(r.get('tuning'))}")
    if r.get("from_embeddings"):
        return f"{head}; vectors from {r['from_embeddings']} ({r['skipped']} unreadable file(s) were skipped there)"
    return f"{head}; {r['chunks_computed']} chunk(s) embedded now, the rest resumed"


def index_repair(r: dict) -> str:
    if not r["repaired"]:
        return f"{r['path']}: SQLite finds nothing wrong; nothing to repair"
    kept = ", ".join(f"{n} {t}" for t, n in r["kept"].items())
    lost = ""
    if "items_without_vector" in r:
        lost = (f"; {r['items_without_vector']} item(s) whose vectors were lost and {r['vectors_without_item']} "
                f"vector(s) whose item was lost were dropped ({r['items']} items now): the collection brings them back "
                "at the next reload of another version, or with byol index build --from-collection --force")
    return f"{r['path']}: repaired, kept {kept} readable rows{lost}; the damaged file is kept as {r['damaged_copy']}"


def index_export(r: dict) -> str:
    exact = "" if r["exact"] else " (PQ index: vectors are its approximations)"
    return (f"exported {r['count']} vectors ({r['dim']}-d, encoder {r['encoder_version']}, {r['factory']}) to "
            f"{r['out']}: embeddings.npy, metadata.parquet, manifest.json{exact}")


def embed_folder(m: dict) -> str:
    return (f"embedded {m['count']} images ({m['dim']}-d, encoder {m['encoder_version']}), skipped "
            f"{len(m['skipped'])} unreadable file(s)")


def index_add(r: dict) -> str:
    ids = r["ids"]
    return f"added {len(ids)} image(s) (ids {ids[0]}..{ids[-1]}), skipped {r['skipped']}; index holds {r['size']}"


def search(r: dict) -> str:
    lines = [f"{'rank':>4}  {'score':>6}  {'id':>8}  {'label':<14}  uri"]
    for rank, h in enumerate(r["hits"], 1):
        lines.append(f"{rank:>4}  {h.score:6.3f}  {h.id:>8}  {str(h.metadata.get('label', '')):<14}  "
                     f"{h.metadata.get('uri', '')}")
    if r["grid"]:
        lines.append(f"grid written to {r['grid']}")
    return "\n".join(lines)


def probe(r: dict) -> str:
    lines = [f"encoder {r['encoder_version']}: {len(r['classes'])} classes; {protocol(r)}",
             f"{'method':<24}{'accuracy':>10}"]
    lines += [f"{name:<24}{acc:>10.2%}" for name, acc in r["accuracy"].items()]
    lines += [f"{'random_init ' + name:<24}{value:>10.2%}" for name, value in r["random_init"].items()
              if name in ("knn", "probe") or name.startswith("knn_")]
    lines.append(f"saved linear probe + kNN at {r['path']}")
    return "\n".join(lines)


def gate(report: dict) -> str:
    """Which gate ran, both encoders' figures, the thresholds and the verdict."""
    lines = _label_free_gate(report) if report.get("gate") == "label-free" else _labelled_gate(report)
    lines.append("  → " + ("ACCEPTED" if report["accepted"] else "REJECTED: " + "; ".join(report["reasons"])))
    return "\n".join(lines)


def _labelled_gate(report: dict) -> list[str]:
    s = report.get("settings") or {}
    size = f", {s['n_train']} reference + {s['n_test']} held-out images" if "n_train" in s else ""
    lines = [f"labelled gate on {report['eval_data']}{size}: reject when kNN or linear-probe accuracy drops by more "
             f"than {report['tolerance']}",
             f"  {'':10s} {'version':30s} {'kNN':>8s} {'probe':>8s}"]
    for name in ("current", "candidate"):
        r = report[name]
        lines.append(f"  {name:10s} {r['version']:30s} {r['knn']:8.4f} {r['probe']:8.4f}")
    return lines


LABEL_FREE_COLUMNS = (("embedding_std", "std"), ("effective_rank", "eff.rank"), ("uniformity", "uniform."),
                      ("alignment", "align."), ("neighbour_agreement", "agree@10"))


def _label_free_gate(report: dict) -> list[str]:
    t = report["thresholds"]
    lines = [f"label-free gate on {report['n_images']} of your images ({report.get('sample_from', 'probe sample')}, "
             f"seed {t['seed']}; no labels):",
             f"  {'':10s} {'version':30s}" + "".join(f"{label:>10s}" for _, label in LABEL_FREE_COLUMNS)]
    for name in ("current", "candidate"):
        r = report[name]
        lines.append(f"  {name:10s} {r['version']:30s}" + "".join(
            f"{r[key]:10.4f}" if key in r else f"{'':10s}" for key, _ in LABEL_FREE_COLUMNS))
    lines.append(f"  thresholds: candidate std and effective rank >= {t['min_ratio']} x current; uniformity <= "
                 f"{t['max_uniformity_ratio']} x current; alignment <= {t['max_alignment_ratio']} x current + "
                 f"{t.get('alignment_slack', 0.05)}; neighbour agreement >= {t['min_agreement']}")
    return lines


def retrain(r: dict) -> str:
    status = r["status"]
    if status == "locked":
        return f"another byol retrain is running (lock {r['lock']}); nothing to do"
    if status == "no-new-images":
        return f"no new images in {', '.join(r['dirs'])} since the last retrain; nothing to do"
    if r["gate"].get("gate") == "training":
        return (f"retraining {r['parent']} on {r['new_images']} new image(s) failed, nothing was registered (the "
                f"images stay new for the next retrain): {r['gate']['reasons'][0]}")
    lines = [f"retrained {r['parent']} on {r['new_images']} new image(s) → candidate {r['version']}", "",
             gate(r["gate"])]
    if status == "promoted":
        lines.append(f"promoted {r['version']} (rollback: byol rollback)")
    else:
        lines.append(f"{r['version']} stays in the model store, unpromoted")
    return "\n".join(lines)


def release(r: dict, verb: str) -> str:
    history = r.get("history") or []
    line = (f"current: {r['current']}  (rollback target: {history[0] if history else None})" if verb == "promote"
            else f"rolled back: current is now {r['current']}")
    if r.get("reloaded"):
        line += f"\nserver now serves {r['reloaded']}"
    return line
