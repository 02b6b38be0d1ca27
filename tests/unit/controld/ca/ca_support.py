"""Support of the CA tests: CSRs made like a sidecar would, and an in-memory KV."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from controld.ca.kv import KV
from controld.ca.records import CARecords
from controld.sealed import RecordKey
from meshcore.registry.model import KvEntry

#: The record key of the CA tests (controld makes a random one at first start).
RECORD_KEY = RecordKey(b"test record key, 32 bytes long!!")


def records(kv: KV) -> CARecords:
    """Sealed CA records over ``kv`` with :data:`RECORD_KEY`."""
    return CARecords(kv, RECORD_KEY)


LeafPrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def make_csr(
    key: LeafPrivateKey | None = None, *, uri: str | None = None
) -> tuple[str, LeafPrivateKey]:
    """A PEM CSR (optionally asking for a SAN URI, which the CA must ignore) and its key."""
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii"), key


@dataclass
class FakeKV:
    """Consul's KV semantics as far as the CA uses them (CAS put; CAS delete of a missing
    key succeeds, as in Consul)."""

    entries: dict[str, KvEntry] = field(default_factory=dict)
    index: int = 0

    async def kv_get(self, key: str) -> KvEntry | None:
        return self.entries.get(key)

    async def kv_list(self, prefix: str) -> tuple[int, list[KvEntry]]:
        found = [e for k, e in sorted(self.entries.items()) if k.startswith(prefix)]
        return self.index, found

    async def kv_put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        existing = self.entries.get(key)
        if cas is not None:
            if cas == 0 and existing is not None:
                return False
            if cas != 0 and (existing is None or existing.modify_index != cas):
                return False
        self.index += 1
        create = existing.create_index if existing is not None else self.index
        self.entries[key] = KvEntry(key, value, self.index, create)
        return True

    async def kv_delete(self, key: str, *, cas: int | None = None) -> bool:
        existing = self.entries.get(key)
        if existing is None:
            return True
        if cas is not None and existing.modify_index != cas:
            return False
        del self.entries[key]
        return True
