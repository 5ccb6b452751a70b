"""A GCS JSON API emulator on localhost for the tests: `gcp-storage-emulator`, plus the two parts of the
GCS contract it lacks and TensorStore (Orbax's array I/O) relies on.

gcp-storage-emulator (2026.7.19) sends no `x-goog-generation` header on media downloads, so TensorStore
records generation 0 for what it read and later refuses its own cache condition ("Malformed
StorageGeneration"); and it ignores the `ifGenerationMatch` / `ifGenerationNotMatch` preconditions that
TensorStore's OCDBT commits and cache revalidation send. Real GCS does both
(cloud.google.com/storage/docs/json_api/v1/objects/get, .../request-preconditions). `patch()` adds
them by wrapping the emulator's download, metadata, upload and delete handlers; nothing else changes.

Run as `python tests/gcs_emulator.py PORT BUCKET` (what `Emulator` does); the emulator keeps
everything in memory and goes away with the process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus


def patch() -> None:
    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def generation(storage, bucket: str, name: str) -> tuple[int, dict | None]:
        try:
            obj = storage.get_file_obj(bucket, name)
        except NotFound:
            return 0, None
        return int(obj["generation"]), obj

    def failed(request, current: int, not_match_status: HTTPStatus) -> HTTPStatus | None:
        q = request.query
        if "ifGenerationMatch" in q and int(q["ifGenerationMatch"][0]) != current:
            return HTTPStatus.PRECONDITION_FAILED
        if "ifGenerationNotMatch" in q and int(q["ifGenerationNotMatch"][0]) == current:
            return not_match_status
        return None

    def reading(original):
        def handler(request, response, storage, *args, **kwargs):
            p = request.params
            gen, obj = generation(storage, p["bucket_name"], p["object_id"])
            if obj is not None:
                status = failed(request, gen, HTTPStatus.NOT_MODIFIED)
                if status is not None:
                    response.status = status
                    return None
                response["x-goog-generation"] = obj["generation"]
                response["x-goog-metageneration"] = obj["metageneration"]
            return original(request, response, storage, *args, **kwargs)
        return handler

    def writing(original, name_of):
        def handler(request, response, storage, *args, **kwargs):
            name = name_of(request)
            if name is not None:
                gen, _ = generation(storage, request.params["bucket_name"], name)
                status = failed(request, gen, HTTPStatus.PRECONDITION_FAILED)
                if status is not None:
                    response.status = status
                    return None
            return original(request, response, storage, *args, **kwargs)
        return handler

    upload_name = lambda r: r.query["name"][0] if r.query.get("uploadType") == ["media"] and "name" in r.query else None  # noqa: E731
    wrapped = {
        objects.download: reading(objects.download),
        objects.get: reading(objects.get),
        objects.insert: writing(objects.insert, upload_name),
        objects.delete: writing(objects.delete, lambda r: r.params["object_id"]),
    }
    for original, new in wrapped.items():  # get (alt=media) calls the module's download: checked twice, same answer
        setattr(objects, original.__name__, new)
    server.HANDLERS = tuple((regex, {m: wrapped.get(f, f) for m, f in table.items()}) for regex, table in server.HANDLERS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """The patched emulator in a subprocess on a free localhost port, with one bucket."""

    def __init__(self, bucket: str = "xlp-test"):
        self.bucket = bucket
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, __file__, str(self.port), bucket],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b/{bucket}", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"gcs emulator did not start on port {self.port}")
                time.sleep(0.05)

    def env(self) -> dict[str, str]:
        """What a run needs to use it: the emulator's address, and no credential discovery that could
        reach for the GCE metadata server (pointed at a closed local port, to be sure)."""
        dead = f"127.0.0.1:{_free_port()}"
        return {"STORAGE_EMULATOR_HOST": self.url, "NO_GCE_CHECK": "true", "GCE_METADATA_HOST": dead,
                "GCE_METADATA_IP": dead, "GCE_METADATA_ROOT": dead}

    def _object_url(self, name: str, media: bool = True) -> str:
        q = "?alt=media" if media else ""
        return f"{self.url}/storage/v1/b/{self.bucket}/o/{urllib.parse.quote(name, safe='')}{q}"

    def read(self, name: str) -> bytes | None:
        try:
            with urllib.request.urlopen(self._object_url(name), timeout=10) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def write(self, name: str, data: bytes) -> None:
        url = f"{self.url}/upload/storage/v1/b/{self.bucket}/o?uploadType=media&name={urllib.parse.quote(name, safe='')}"
        req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=10):
            pass

    def names(self, prefix: str) -> list[str]:
        import json

        out, token = [], None
        while True:
            q = {"prefix": prefix, **({"pageToken": token} if token else {})}
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(q)}", timeout=10) as r:
                page = json.loads(r.read())
            out += [i["name"] for i in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def main(port: int, bucket: str) -> None:
    patch()
    from gcp_storage_emulator.__main__ import main as emulator_main

    emulator_main(["start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--default-bucket", bucket, "-q"])


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
