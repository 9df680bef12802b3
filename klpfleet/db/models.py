"""The inventory database: hosts, patch artifacts, per-host patch state, rollouts and the event log.

Typed SQLAlchemy 2 declarative models. Portable types only, so the same schema runs on SQLite and
PostgreSQL; the naming convention lets Alembic alter constraints on SQLite in batch mode.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from klpfleet.db.types import UTCDateTime, utcnow
from klpfleet.states import Outcome, RolloutStatus, WaveHostStatus, WaveStatus


def one_of(column: str, values: type[Any]) -> CheckConstraint:
    """A CHECK that the column holds one of an enum's values (named, so Alembic can alter it)."""
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_valid")


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


host_groups = Table(
    "host_groups",
    Base.metadata,
    Column("host_id", ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)


class Host(Base):
    __tablename__ = "hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    # How to reach it, as Ansible would (ansible_host/port/user/ssh key file).
    address: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None]
    user: Mapped[str | None] = mapped_column(String(255))
    key_file: Mapped[str | None] = mapped_column(Text)
    # Non-secret connection and klpfleet vars kept for probe and the inventory plugin
    # (ansible_connection, ansible_python_interpreter, klp_backend, klp_sim_root ...).
    vars: Mapped[dict[str, Any]] = mapped_column(default=dict)
    kernel_release: Mapped[str | None] = mapped_column(String(255), index=True)
    livepatch_supported: Mapped[bool | None]
    # {"enforced": sig_enforce, "lockdown": none|integrity|confidentiality} as the host last reported them.
    module_signatures: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reachable: Mapped[bool | None]
    last_seen: Mapped[datetime | None]
    # The boot it was last seen in: a new boot id means it rebooted (patches not kept for boot are lost).
    boot_id: Mapped[str | None] = mapped_column(String(64))
    booted_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    groups: Mapped[list[Group]] = relationship(secondary=host_groups, back_populates="hosts")
    labels: Mapped[list[HostLabel]] = relationship(
        back_populates="host", cascade="all, delete-orphan", passive_deletes=True
    )
    patch_states: Mapped[list[HostPatch]] = relationship(
        back_populates="host", cascade="all, delete-orphan", passive_deletes=True
    )


class Group(Base):
    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)

    hosts: Mapped[list[Host]] = relationship(secondary=host_groups, back_populates="groups")


class HostLabel(Base):
    """A failure-domain style label (zone, rack, region ...) used for grouping and wave planning."""

    __tablename__ = "host_labels"

    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))

    host: Mapped[Host] = relationship(back_populates="labels")

    __table_args__ = (Index("ix_host_labels_key_value", "key", "value"),)


class Patch(Base):
    """A livepatch artifact (.ko), identified by its content."""

    __tablename__ = "patches"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)  # .modinfo name: also the sysfs dir name
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    srcversion: Mapped[str | None] = mapped_column(String(64))
    vermagic: Mapped[str] = mapped_column(Text)
    kernel_release: Mapped[str] = mapped_column(String(255), index=True)
    depends: Mapped[list[Any]] = mapped_column(default=list)
    size: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str | None] = mapped_column(Text)
    cves: Mapped[list[Any]] = mapped_column(default=list)
    path: Mapped[str] = mapped_column(Text)  # the stored copy, in the artifact store
    source_path: Mapped[str | None] = mapped_column(Text)  # where it was added from
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Read from the .ko at `patch add` (klpfleet.registry.klp_contents): objects -> functions, callbacks,
    # replace, system states; null for a patch added before 0.10 until something reads its stored copy.
    contents: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    signed: Mapped[bool | None]
    signature: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # signer, key id, hash (module_signature)
    # `klpfleet patch block`: while set, no rollout, reconcile or host's boot loads the patch (registry.blocks).
    blocked_at: Mapped[datetime | None]
    blocked_by: Mapped[str | None] = mapped_column(String(255))
    blocked_reason: Mapped[str | None] = mapped_column(Text)


class CveFix(Base):
    """An operator's word that a kernel release fixes a CVE (the fix is in the kernel, no patch needed)."""

    __tablename__ = "cve_fixes"

    cve: Mapped[str] = mapped_column(String(64), primary_key=True)
    kernel_release: Mapped[str] = mapped_column(String(255), primary_key=True)
    marked_by: Mapped[str] = mapped_column(String(255))
    marked_at: Mapped[datetime] = mapped_column(default=utcnow)


class ExecutionNode(Base):
    """A machine that runs Ansible near the hosts for the controller (ansible-runner's worker, over SSH).

    It holds no state and no database credentials: the controller streams it each job and records the events
    it streams back. It serves the hosts whose label `serves_label` is `serves_value`, or, with no label, the
    hosts no labelled node serves."""

    __tablename__ = "execution_nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    ssh_user: Mapped[str] = mapped_column(String(255))
    ssh_host: Mapped[str] = mapped_column(String(255))
    ssh_port: Mapped[int] = mapped_column(default=22)
    key_file: Mapped[str | None] = mapped_column(Text)
    known_hosts: Mapped[str | None] = mapped_column(Text)  # None: the controller user's ~/.ssh/known_hosts
    runner: Mapped[str] = mapped_column(Text, default="ansible-runner")  # the node's ansible-runner executable
    keepalive_seconds: Mapped[int] = mapped_column(default=5)  # the worker says it is alive this often
    silent_after_seconds: Mapped[int] = mapped_column(default=60)  # no byte for this long: the node is lost
    serves_label: Mapped[str | None] = mapped_column(String(64))
    serves_value: Mapped[str | None] = mapped_column(String(255))
    capacity: Mapped[dict[str, Any]] = mapped_column(default=dict)  # worker-info: cpu, memory, runner version
    checked_at: Mapped[datetime | None] = mapped_column()
    added_by: Mapped[str] = mapped_column(String(255))
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class HostPatch(Base):
    """What klpfleet knows about one patch on one host."""

    __tablename__ = "host_patches"

    id: Mapped[int] = mapped_column(primary_key=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    patch_id: Mapped[int] = mapped_column(ForeignKey("patches.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(32))
    enabled: Mapped[bool | None]
    transition: Mapped[bool | None]
    stack_order: Mapped[int | None]
    replace: Mapped[bool | None]
    objects: Mapped[dict[str, Any]] = mapped_column(default=dict)  # object name -> patched (bool)
    functions: Mapped[dict[str, Any]] = mapped_column(default=dict)  # object -> ["func,sympos"] as sysfs lists
    last_outcome: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))  # the module's stable klp_error
    errno: Mapped[int | None]
    refused_object: Mapped[str | None] = mapped_column(String(255))
    stalled_tasks: Mapped[list[Any]] = mapped_column(default=list)
    # After a failure: true when no module and no sysfs directory of the patch is left on the host.
    host_clean: Mapped[bool | None]
    attempts: Mapped[int] = mapped_column(default=0)
    observed_at: Mapped[datetime] = mapped_column(default=utcnow)
    observed_by: Mapped[str] = mapped_column(String(255))

    host: Mapped[Host] = relationship(back_populates="patch_states")
    patch: Mapped[Patch] = relationship()

    __table_args__ = (
        UniqueConstraint("host_id", "patch_id"),
        Index("ix_host_patches_patch_id_state", "patch_id", "state"),
        Index("ix_host_patches_state", "state"),
    )


class Rollout(Base):
    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    patch_id: Mapped[int] = mapped_column(ForeignKey("patches.id"))
    status: Mapped[str] = mapped_column(String(32), index=True)
    selector: Mapped[str | None] = mapped_column(Text)  # host pattern or group it was planned over
    policy: Mapped[dict[str, Any]] = mapped_column(default=dict)  # waves, budgets, bake, health check ...
    # Runtime control by operators (the policy is what was planned; these are what changed since).
    promoted_full: Mapped[bool] = mapped_column(default=False)  # `promote --full`
    gate_overrides: Mapped[list[Any]] = mapped_column(default=list)  # 0-based waves whose gate was overridden
    current_wave: Mapped[int | None]
    pause_reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # One driver at a time: a lease with a fencing token, taken by a conditional UPDATE.
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires: Mapped[datetime | None]
    lease_token: Mapped[int] = mapped_column(default=0)

    patch: Mapped[Patch] = relationship()
    waves: Mapped[list[Wave]] = relationship(
        back_populates="rollout", order_by="Wave.index", cascade="all, delete-orphan"
    )

    __table_args__ = (one_of("status", RolloutStatus),)


class Wave(Base):
    __tablename__ = "waves"

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    index: Mapped[int]
    domain: Mapped[str | None] = mapped_column(String(255))  # label value when planned --by LABEL
    status: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    rollout: Mapped[Rollout] = relationship(back_populates="waves")
    hosts: Mapped[list[WaveHost]] = relationship(back_populates="wave", cascade="all, delete-orphan")

    __table_args__ = (UniqueConstraint("rollout_id", "index"), one_of("status", WaveStatus))


class WaveHost(Base):
    __tablename__ = "wave_hosts"

    id: Mapped[int] = mapped_column(primary_key=True)
    wave_id: Mapped[int] = mapped_column(ForeignKey("waves.id", ondelete="CASCADE"))
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    host_id: Mapped[int] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    transition_seconds: Mapped[float | None]  # the module's own figure for its last load (wait included)

    wave: Mapped[Wave] = relationship(back_populates="hosts")
    host: Mapped[Host] = relationship()

    __table_args__ = (
        UniqueConstraint("rollout_id", "host_id"),
        one_of("status", WaveHostStatus),
        one_of("outcome", Outcome),
    )


class AnsibleRun(Base):
    """One ansible-playbook run, as the recorder callback saw it."""

    __tablename__ = "ansible_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    ident: Mapped[str | None] = mapped_column(String(255), index=True)  # ansible-runner ident, when driven by it
    playbook: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))  # running | completed | failed | interrupted
    actor: Mapped[str] = mapped_column(String(255))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id", ondelete="SET NULL"))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Event(Base):
    """Append-only audit trail. Names are copied in so events outlive the rows they mention."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(64), index=True)
    host_id: Mapped[int | None] = mapped_column(ForeignKey("hosts.id", ondelete="SET NULL"))
    host_name: Mapped[str | None] = mapped_column(String(255))
    patch_id: Mapped[int | None] = mapped_column(ForeignKey("patches.id", ondelete="SET NULL"))
    patch_name: Mapped[str | None] = mapped_column(String(255))
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id", ondelete="SET NULL"))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)

    # A host's and a rollout's latest events, newest first, without scanning the whole trail.
    __table_args__ = (
        Index("ix_events_host_id_at", "host_id", "at"),
        Index("ix_events_rollout_id_at", "rollout_id", "at"),
    )
