"""The model registry as plain data, importable without torch: ``taskrel.models`` builds
from it and the command line's help lists its names."""

from __future__ import annotations

MODELS: dict[str, str] = {
    "stl": "taskrel.models.sharing:SingleTask",
    "hard": "taskrel.models.sharing:HardSharing",
    "soft": "taskrel.models.sharing:SoftSharing",
    "pooled": "taskrel.models.pooled:Pooled",
    "vmtl": "taskrel.models.vmtl:VMTL",
    "feedback": "taskrel.models.feedback:FeedbackMTL",
    "slu": "taskrel.models.slu:JointSLU",
    "slu-stack": "taskrel.models.slu_stack:StackSLU",
}
