"""Loading Hugging Face VLMs, building the tiny Mllama, and the committed base model of the embedded default."""

from __future__ import annotations

from pathlib import Path

# The embedded default's base model, committed as sherlock/models/embedded/: ``sherlock pretrain-perception``
# with its defaults (seed 0), then once more from that model with the reading families (both commands:
# docs/results.md, "The base model"); its SHA256SUMS digest:
EMBEDDED_BASE = Path(__file__).resolve().parent / "embedded"
EMBEDDED_BASE_DIGEST = "58ea330f48952abd67392cf6802153698caf79117b952db7a96e28f929af63ca"


def embedded_base() -> Path:
    """The committed base model's directory, after checking every file against its SHA256SUMS and the
    manifest against :data:`EMBEDDED_BASE_DIGEST`.
    """
    from sherlock.storage import MANIFEST_FILE, IntegrityError, directory_digest, file_sums, parse_manifest

    recorded = parse_manifest((EMBEDDED_BASE / MANIFEST_FILE).read_text())
    actual = file_sums(EMBEDDED_BASE)
    if actual != recorded or directory_digest(EMBEDDED_BASE) != EMBEDDED_BASE_DIGEST:
        changed = sorted(name for name in set(actual) | set(recorded) if actual.get(name) != recorded.get(name))
        raise IntegrityError(f"the committed base model at {EMBEDDED_BASE} does not match its digest "
                             f"(files differing from SHA256SUMS: {changed or 'none; the manifest itself changed'})")
    return EMBEDDED_BASE
