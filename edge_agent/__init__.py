"""The on-device runtime (Raspberry Pi 5 + AI HAT): no torch, no transformers.

    agent    the request path: sensitivity → policies.decide → local / cascade / cloud / fallback
    api      HTTP: Open Inference Protocol v2, /v1/requests, /v1/jobs/{id}, /metrics
    pii      PII detection (Bengali and English) and keyed tokens; vault: the encrypted token store
    outbox   durable SQLite outbox replayed in order; device: utilization, capabilities, heartbeat
    models   the int8 ONNX embedder, the classifier and its distilled fallback (signed registry)

Docs: docs/edge.md, docs/edge-models.md.
"""
