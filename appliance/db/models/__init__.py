"""Every model, imported here so Base.metadata is complete for migrations and for anyone who needs a class."""

from appliance.db.base import Base
from appliance.db.models.consoles import ConsoleKind, ConsoleTicket
from appliance.db.models.enrolment import EnrolmentToken, EnrolmentWindow, HostClaim
from appliance.db.models.events import Event, Severity
from appliance.db.models.fencing import FenceAction, FenceAttempt, FenceResult
from appliance.db.models.hosts import Arch, FenceState, Host, HostDisk, HostNic, HostState, HypervisorType
from appliance.db.models.leadership import Lease
from appliance.db.models.networks import (
    BondMode,
    BootProtocol,
    HostNetwork,
    IpRange,
    Network,
    NetworkRole,
    NetworkRule,
    RuleMatch,
)
from appliance.db.models.pools import Cluster, HardwarePool
from appliance.db.models.snapshots import Snapshot, SnapshotState
from appliance.db.models.storage import StoragePool, StorageState, StorageType, StorageVolume, VolumeFormat
from appliance.db.models.tasks import TargetKind, Task, TaskState, TaskType, can_transition, check_transition
from appliance.db.models.templates import Template, VmPool
from appliance.db.models.users import Permission, Quota, Role, User, WebSession
from appliance.db.models.vms import BootDevice, DiskBus, Firmware, NicModel, PlacementPolicy, Vm, VmDisk, VmNic, VmState

__all__ = [
    "Arch",
    "Base",
    "BondMode",
    "BootDevice",
    "BootProtocol",
    "Cluster",
    "ConsoleKind",
    "ConsoleTicket",
    "DiskBus",
    "EnrolmentToken",
    "EnrolmentWindow",
    "Event",
    "FenceAction",
    "FenceAttempt",
    "FenceResult",
    "FenceState",
    "Firmware",
    "HardwarePool",
    "Host",
    "HostClaim",
    "HostDisk",
    "HostNetwork",
    "HostNic",
    "HostState",
    "HypervisorType",
    "IpRange",
    "Lease",
    "Network",
    "NetworkRole",
    "NetworkRule",
    "NicModel",
    "Permission",
    "PlacementPolicy",
    "Quota",
    "Role",
    "RuleMatch",
    "Severity",
    "Snapshot",
    "SnapshotState",
    "StoragePool",
    "StorageState",
    "StorageType",
    "StorageVolume",
    "TargetKind",
    "Task",
    "TaskState",
    "TaskType",
    "Template",
    "User",
    "Vm",
    "VmDisk",
    "VmNic",
    "VmPool",
    "VmState",
    "VolumeFormat",
    "WebSession",
    "can_transition",
    "check_transition",
]
