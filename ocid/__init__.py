"""ocid: a Python implementation of cri-o, the OCI-based Kubernetes Container Runtime Interface."""

__version__ = "0.1.0"

#: The CRI API version string a CRI runtime reports in VersionResponse.version.
CRI_VERSION = "0.1.0"
#: The CRI API this daemon serves.
CRI_API_VERSION = "v1"
RUNTIME_NAME = "ocid"
#: Date printed in the generated man pages; bump with the version.
RELEASE_DATE = "2026-11-29"
