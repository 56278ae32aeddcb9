"""What a dataset is, for lineage (``mlflow.log_input``): name, digest, source URI, schema, number of rows.

``dataset_description(uri, digest, name)`` reads only what it must, through fsspec (local or S3): parquet
footers (a dedup folder's ``data/*.parquet``, or parquet files), the record batches of ``.arrow`` files (a
``save_to_disk`` folder's ``train`` split, or arrow files), or the lines of a JSONL file (a ``.jsonl`` file,
or a folder's ``docs.jsonl``). It returns plain data; the caller builds MLflow objects from it::

    d = dataset_description(uri, digest, "corpus")
    mlflow.log_input(MetaDataset(source=..., name=d["name"], digest=d["digest"],
                                 schema=Schema.from_json(json.dumps(d["mlflow_schema"]))), context="train")
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from finmerge.core import storage

# Arrow type -> MLflow ColSpec type (mlflow.types.DataType); anything nested or unusual is "any".
_MLFLOW_TYPES = {
    "string": "string",
    "large_string": "string",
    "bool": "boolean",
    "int8": "integer",
    "int16": "integer",
    "int32": "integer",
    "int64": "long",
    "uint8": "integer",
    "uint16": "integer",
    "uint32": "long",
    "uint64": "long",
    "float": "float",
    "halffloat": "float",
    "double": "double",
    "binary": "binary",
    "large_binary": "binary",
}
_JSON_TYPES = {str: "string", bool: "bool", int: "int64", float: "double", dict: "struct", list: "list"}


def _mlflow_type(arrow_type: str) -> str:
    if arrow_type.startswith(("timestamp", "date")):
        return "datetime"
    return _MLFLOW_TYPES.get(arrow_type, "any")


def _files(fs, path: str) -> tuple[str, list[str]]:
    """(kind, files) of what ``path`` names: parquet, arrow or jsonl files."""
    if not fs.isdir(path):
        ext = posixpath.splitext(path)[1].lower()
        kind = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "jsonl"}.get(ext)
        if kind is None:
            raise ValueError(f"{path}: not a .parquet, .arrow or .jsonl file, nor a dataset folder")
        return kind, [path]
    found = sorted(fs.find(path))
    parquet = [p for p in found if p.endswith(".parquet")]
    if parquet:
        return "parquet", parquet
    root = path
    if fs.isfile(posixpath.join(path, "dataset_dict.json")):
        root = posixpath.join(path, "train")
    if all(fs.isfile(posixpath.join(root, f)) for f in ("state.json", "dataset_info.json")):
        with fs.open(posixpath.join(root, "state.json"), "rb") as fh:
            names = [f["filename"] for f in json.loads(fh.read()).get("_data_files", [])]
        return "arrow", [posixpath.join(root, n) for n in names]
    if fs.isfile(posixpath.join(path, "docs.jsonl")):
        return "jsonl", [posixpath.join(path, "docs.jsonl")]
    raise ValueError(f"{path}: no parquet files, save_to_disk dataset or docs.jsonl in this folder")


def _arrow_schema(fs, kind: str, files: list[str]) -> tuple[pa.Schema | None, int]:
    schema, rows = None, 0
    for f in files:
        with fs.open(f, "rb") as fh:
            if kind == "parquet":
                meta = pq.ParquetFile(fh).metadata
                schema, rows = schema or meta.schema.to_arrow_schema(), rows + meta.num_rows
                continue
            try:
                reader = pa.ipc.open_stream(fh)
            except pa.ArrowInvalid:  # the IPC file format (Feather v2) rather than the stream format
                fh.seek(0)
                reader = pa.ipc.open_file(fh)
                schema, rows = (
                    schema or reader.schema,
                    rows + sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches)),
                )
                continue
            schema = schema or reader.schema
            rows += sum(batch.num_rows for batch in reader)
    return schema, rows


def _jsonl_rows(fs, path: str) -> Iterator[dict]:
    with fs.open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                obj = json.loads(line)
                if isinstance(obj, dict):
                    yield obj


def _jsonl_columns(fs, path: str) -> tuple[list[dict], int]:
    types: dict[str, str] = {}
    rows = 0
    for obj in _jsonl_rows(fs, path):
        rows += 1
        for k, v in obj.items():
            if v is not None and types.get(k, "null") == "null":
                types[k] = _JSON_TYPES.get(type(v), "string")
            types.setdefault(k, "null")
    return [{"name": k, "type": t} for k, t in types.items()], rows


def _columns(schema: pa.Schema) -> list[dict]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def dataset_description(uri: str, digest: str, name: str) -> dict:
    """``{"name", "digest", "source", "source_type", "format", "num_rows", "num_files", "schema",
    "mlflow_schema", "profile"}`` of the dataset at ``uri``: ``schema`` lists ``{"name", "type"}`` (Arrow
    type names; JSONL: string/int64/double/bool/struct/list/null); ``mlflow_schema`` is the same as MLflow
    ColSpec JSON (``mlflow.types.Schema.from_json``); ``profile`` is ``{"num_rows", "num_files"}``."""
    fs, path = storage.filesystem(uri)
    kind, files = _files(fs, path)
    if kind == "jsonl":
        columns, rows = _jsonl_columns(fs, files[0])
        mlflow_types = {"string": "string", "int64": "long", "double": "double", "bool": "boolean"}
        mlflow_schema = [
            {"name": c["name"], "type": mlflow_types.get(c["type"], "any"), "required": False}
            for c in columns
        ]
    else:
        schema, rows = _arrow_schema(fs, kind, files)
        columns = _columns(schema) if schema is not None else []
        mlflow_schema = [
            {"name": c["name"], "type": _mlflow_type(c["type"]), "required": False} for c in columns
        ]
    return {
        "name": name,
        "digest": digest,
        "source": storage.normalize(uri),
        "source_type": uri.split("://", 1)[0] if storage.is_remote(uri) else "local",
        "format": kind,
        "num_rows": rows,
        "num_files": len(files),
        "schema": columns,
        "mlflow_schema": mlflow_schema,
        "profile": {"num_rows": rows, "num_files": len(files)},
    }
