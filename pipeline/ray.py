"""The face pipeline on a Ray cluster: the local engine's rows, computed by Ray Data.

Stages, each Ray Data's own:
1. The driver lists the sources as the local engine does (folders expanded, sorted), one row each.
2. A stateless stage (Ray tasks, as many as the cluster's CPUs allow) reads each source's frames,
   finds the faces and preprocesses them: one row per face, per face-less frame, per failure.
3. An actor pool classifies the faces: each actor builds its model and `optimize()`s it once (on
   its own GPU when it has one), runs batches at the local engine's fixed batch shapes and emits
   the local engine's fields.

Faults are Ray's to handle: Ray Data restarts a dead actor and retries the tasks it held (its
defaults, max_restarts=-1 and max_task_retries=-1), and retries a failed read task. Every stage is
a pure function of its input rows, so a retried block gives the same rows and the output holds
each row once. Rows carry (order, seq), the source's place in the input and the row's place in
that source, which restores the local engine's order when the output is gathered."""
import math
from collections.abc import Iterator

import numpy as np
import torch

try:
    import pyarrow as pa
    import ray
    import ray.data
except ImportError as e:  # the optional extra
    raise ImportError("the Ray engine needs Ray Data: pip install 'ferfuse[ray]'") from e

from ..engine import is_optimized
from ..models.base import FERModel
from . import detect, sources
from .predict import (FacePipeline, crop_face, find_faces, input_size_of, num_classes_of, resolve_batch_size,
                      resolve_labels)
from .sources import Failure

# stage 2's rows: a face (crop set), a frame without faces (faces 0) or a failure (error set)
_FOUND = pa.schema([("source", pa.string()), ("order", pa.int64()), ("seq", pa.int64()), ("frame", pa.int64()),
                    ("time_s", pa.float64()), ("faces", pa.int64()), ("box", pa.list_(pa.int64(), 4)),
                    ("error", pa.string()), ("crop", pa.binary())])
READ_TASK_MEMORY = 768 * 2**20
ROWS_PER_BLOCK = 32  # faces a read task hands on at a time: ~20 MB of 224² crops, streamed
SOURCES_PER_TASK = 8  # a Ray task costs milliseconds: one per image would cost as much as its detection


def _found_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=_FOUND)


def read_and_detect(batch: pa.Table, detector, size: tuple[int, int], every: int) -> Iterator[pa.Table]:
    """Stage 2: the sources of `batch` → a row per face (its preprocessed crop as float32 bytes),
    per frame without faces, and per failure, in the local engine's order."""
    find = detect.resolve(detector)  # a HaarDetector per task: OpenCV's cascade is not thread-safe
    transform = FERModel.preprocess_transform(size)
    rows = []
    for source, order in zip(batch["source"].to_pylist(), batch["order"].to_pylist()):
        seq = 0
        for item in sources.frames([source], every):
            head = {"source": item.source, "order": order}
            if isinstance(item, Failure):
                rows.append({**head, "seq": seq, "error": item.message})
                seq += 1
                continue
            head.update(frame=item.index, time_s=item.time_s)
            boxes = find_faces(find, item.image)
            if not len(boxes):
                rows.append({**head, "seq": seq, "faces": 0})
                seq += 1
            for box in boxes:
                crop = crop_face(item.image, box, transform).numpy()
                rows.append({**head, "seq": seq, "box": box.tolist(), "crop": crop.astype(np.float32).tobytes()})
                seq += 1
            if len(rows) >= ROWS_PER_BLOCK:
                yield _found_table(rows)
                rows = []
    if rows:
        yield _found_table(rows)


def output_schema(labels) -> pa.Schema:
    """The rows `predict_dataset` gives: the local records' fields, a score column per label, and
    (order, seq) for the local engine's order."""
    fields = [f for f in _FOUND if f.name != "crop"] + [("label", pa.string())]
    return pa.schema(fields + [(f"score_{label}", pa.float64()) for label in labels])


class Predictor:
    """Stage 3, one per actor: the model built and optimised once, faces classified in batches."""

    def __init__(self, model, labels, size, device: str, batch_size: int, threads: int):
        if device == "cpu":
            torch.set_num_threads(threads)  # the actor's CPUs, not the node's
        if isinstance(model, tuple):  # (name, checkpoint): built here, not shipped
            from .cli import load_model

            model = load_model(*model, quiet=True)
        self.pipe = FacePipeline(model, detector=None, device=device, batch_size=batch_size, labels=labels,
                                 input_size=size)
        self.schema = output_schema(self.pipe.labels)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.drop_columns(["crop"]).to_pylist()
        crops = batch["crop"].to_pylist()
        faces = [i for i, c in enumerate(crops) if c is not None]
        if faces:
            shape = (3, *self.pipe.size)
            x = torch.stack([torch.frombuffer(bytearray(crops[i]), dtype=torch.float32).view(shape) for i in faces])
            for i, (label, scores) in zip(faces, self.pipe.classify(self.pipe.infer(x))):
                rows[i]["label"] = label
                rows[i].update({f"score_{k}": v for k, v in scores.items()})
        return pa.Table.from_pylist(rows, schema=self.schema)


def records(rows, labels) -> Iterator[dict]:
    """Rows of `predict_dataset` (dicts, as `Dataset.iter_rows()` gives them) → the local engine's
    JSON-ready records."""
    for row in rows:
        head = {"source": row["source"]}
        if row["error"] is not None:
            yield {**head, "error": row["error"]}
            continue
        head.update(frame=row["frame"], time_s=row["time_s"])
        if row["box"] is None:
            yield {**head, "faces": 0}
        else:
            yield {**head, "box": list(row["box"]), "label": row["label"],
                   "scores": {label: row[f"score_{label}"] for label in labels}}


def predict_dataset(inputs, model="dan", checkpoint: str | None = None, *, labels=None, detector="haar",
                    every: int = 1, workers: int | None = None, cpus_per_worker: float = 1, device: str | None = None,
                    batch_size: int | None = None, input_size=None, ordered: bool = True):
    """The local engine's prediction as a `ray.data.Dataset` (lazy: nothing runs until it is read or
    written), and the label order of its score columns.

    `model`: a network name of `ferfuse.models` (each actor builds it from `checkpoint`, or with
    the seeded random weights the CLI uses) or an unoptimised `nn.Module` (shipped to each actor,
    which optimises its own copy). `workers`: prediction actors; by default one per GPU of the
    cluster, else one per two CPUs (the rest read and detect). `device`: 'cuda' when the cluster
    has GPUs, else 'cpu'. `ordered`: rows in the local engine's order (Ray Data keeps block order),
    else as they finish. Runs on the cluster `ray.init()` connects to (a local one if none)."""
    if not ray.is_initialized():
        ray.init()
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    device = device or ("cuda" if gpus else "cpu")
    if isinstance(model, str):
        from .cli import load_model

        model = (model, checkpoint)
        probe = load_model(*model, quiet=True)  # on the driver only for its input size and classes
    elif isinstance(model, torch.nn.Module):
        if is_optimized(model):
            raise ValueError("pass the original model: each Ray actor optimises its own copy")
        probe = model
    else:
        raise TypeError(f"model: a network name or an nn.Module, not {type(model).__name__}")
    size = input_size_of(probe, input_size)
    labels = resolve_labels(labels, num_classes_of(probe, size, "cpu"))
    for item in inputs:
        if str(item).startswith(sources.CAMERA_PREFIX):
            raise ValueError(f"{item}: a camera is a live source; the Ray engine reads files (use the local engine)")
    expanded, skipped = sources.expand(inputs)
    if not expanded:
        raise ValueError("no images or videos among the inputs" + (f" ({len(skipped)} other files)" if skipped else ""))
    cpus = resources.get("CPU", 0)
    if workers is None:
        workers = gpus if device == "cuda" else max(1, int(cpus // (2 * cpus_per_worker)))
    if workers * cpus_per_worker > cpus - 1:  # the actors would hold every CPU and no read task could start
        raise ValueError(f"{workers} workers of {cpus_per_worker} CPUs on a cluster of {cpus:g} CPUs leave none "
                         "to read and detect: fewer workers, or fewer CPUs per worker (it may be fractional)")
    batch_size = resolve_batch_size(batch_size, device)

    items = [{"source": s, "order": i} for i, s in enumerate(expanded)]
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / SOURCES_PER_TASK))
    ds.context.execution_options.preserve_order = ordered
    # memory: what one read worker holds (measured: 450 MiB at its peak, torch imported, a frame and a
    # block of crops). A request the actors do not make, it also keeps Ray Data from fusing this stage
    # into them, which would read, detect and classify one after the other inside each actor.
    ds = ds.map_batches(read_and_detect, batch_size=None, batch_format="pyarrow", memory=READ_TASK_MEMORY,
                        fn_kwargs={"detector": detector, "size": size, "every": every})
    ds = ds.map_batches(Predictor, batch_size=batch_size, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=workers),
                        num_cpus=cpus_per_worker, num_gpus=1 if device == "cuda" else 0,
                        fn_constructor_kwargs={"model": model, "labels": labels, "size": size, "device": device,
                                               "batch_size": batch_size,
                                               "threads": max(1, math.floor(cpus_per_worker))})
    return ds, labels


def write(ds, labels, output: str | None = None, output_dir: str | None = None, format: str = "parquet") -> dict:
    """Write `predict_dataset`'s rows: gathered into one JSON-lines or CSV file (or stdout) exactly as
    the local engine writes them, or by the workers into `output_dir`, one file per block
    (`format` 'parquet' or 'jsonl'). Returns counts: rows, faces, failed (source → message)."""
    from .output import RecordWriter

    counts = {"rows": 0, "faces": 0, "failed": {}}

    def count(row):
        counts["rows"] += 1
        counts["faces"] += row.get("box") is not None
        if row.get("error") is not None:
            counts["failed"][row["source"]] = row["error"]

    if output_dir is not None:
        if format not in ("parquet", "jsonl"):
            raise ValueError(f"format {format!r}: parquet or jsonl")
        (ds.write_parquet if format == "parquet" else ds.write_json)(output_dir)
        written = ray.data.read_parquet(output_dir) if format == "parquet" else ray.data.read_json(output_dir)
        for row in written.select_columns(["source", "error", "box"]).iter_rows():  # the counts, not the rows
            count(row)
        return counts
    writer = RecordWriter(output, labels)
    try:
        for record in records(ds.iter_rows(), labels):
            writer.write(record)
            count(record)
    finally:
        writer.close()
    return counts


__all__ = ["predict_dataset", "records", "write", "output_schema", "read_and_detect", "Predictor"]
