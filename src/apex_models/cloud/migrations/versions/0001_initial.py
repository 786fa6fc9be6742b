"""The first schema: users, teams, members, hashed tokens, memories with their change feed, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

- memories is also the change feed: every write takes the team's advisory lock, then the
  next value of `change_seq`, so within a team sequences commit in increasing order and a
  reader that has seen sequence n never later finds a new row below n. A delete keeps the
  row as a tombstone (content, vector and tags cleared, `deleted` true) so devices that
  pull learn of it.
- `tsv` is the keyword index: PostgreSQL full text over the runtime's code-aware tokens
  (computed by the server), searched through a GIN index.
- `embedding` holds the float32 vector; the dense index (FAISS) lives beside PostgreSQL
  and is rebuilt from this column, following the feed.
- audit has no foreign keys: its records outlive the teams, tokens and users they name.
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE users (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    is_operator boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE teams (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE members (
    team_id uuid NOT NULL REFERENCES teams ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'writer', 'reader')),
    added_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX members_user ON members (user_id);
CREATE TABLE tokens (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    name text NOT NULL,
    token_sha256 bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX tokens_user ON tokens (user_id);
CREATE SEQUENCE change_seq;
CREATE TABLE memories (
    num bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    team_id uuid NOT NULL REFERENCES teams ON DELETE CASCADE,
    id uuid NOT NULL,
    seq bigint NOT NULL,
    created_by uuid REFERENCES users ON DELETE SET NULL,
    text text,
    kind text,
    tags text[] NOT NULL DEFAULT '{}',
    source text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    embedding bytea,
    tsv tsvector,
    PRIMARY KEY (team_id, id)
);
CREATE INDEX memories_feed ON memories (team_id, seq);
CREATE INDEX memories_tsv ON memories USING gin (tsv);
CREATE INDEX memories_tags ON memories USING gin (tags);
CREATE INDEX memories_created_by ON memories (created_by);
CREATE TABLE audit (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    user_id uuid,
    token_id uuid,
    team_id uuid,
    action text NOT NULL,
    target text,
    outcome text NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_team ON audit (team_id, id);
CREATE INDEX audit_user ON audit (user_id, id);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute("DROP TABLE audit, memories, tokens, members, teams, users; DROP SEQUENCE change_seq;")
