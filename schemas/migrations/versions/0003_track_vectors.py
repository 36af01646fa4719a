"""track vectors in the database (pgvector)

Revision ID: 0003
Revises: 0002
Created: 2026-12-06 02:00:00

Only on PostgreSQL, and only where the server has the `vector` extension: elsewhere this changes
nothing and search keeps its FAISS file index (schemas/vectors.py).
"""

from alembic import op

from schemas.vectors import create_track_vectors

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_track_vectors(op.get_bind())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TABLE IF EXISTS track_vectors")
