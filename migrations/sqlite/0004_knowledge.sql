-- Knowledge (issue 4): creators' documents and their chunks. SQL is the source of truth; the
-- vector index (Qdrant) holds one point per chunk, with the chunk's id.
--
-- A document is identified within its tenant by `source_key` (the file path or, for JSON
-- uploads, the title): uploading the same key with other content replaces its chunks; the same
-- content again (`content_hash`) changes nothing. `indexed_at` is set once the chunks are in the
-- vector index; documents without it are indexed again at start.
CREATE TABLE document (
    id            TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenant(id),
    title         TEXT NOT NULL,
    source_key    TEXT NOT NULL,
    format        TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    chunks        BIGINT NOT NULL,
    tokens        BIGINT NOT NULL,
    indexed_at    BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    UNIQUE (tenant_id, source_key)
);
CREATE INDEX document_by_hash ON document (tenant_id, content_hash);

CREATE TABLE chunk (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenant(id),
    document_id  TEXT NOT NULL REFERENCES document(id),
    idx          BIGINT NOT NULL,
    heading      TEXT NOT NULL,
    text         TEXT NOT NULL,
    tokens       BIGINT NOT NULL,
    UNIQUE (document_id, idx)
);
