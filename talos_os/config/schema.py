"""JSON Schema of the machine config format, for editors (YAML language servers) and other tools."""

from typing import Any

from talos_os.config.model import MachineConfig

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_TITLE = "talos-os machine config (v1)"
SCHEMA_DESCRIPTION = (
    "Machine config (userdata) of a talos-os node: its role, OS PKI, network, install and the cluster it "
    "joins. Certificates and keys are base64 of PEM text."
)


def json_schema() -> dict[str, Any]:
    """The draft 2020-12 JSON Schema of the YAML format (camelCase keys), generated from the model.

    The schema checks shape and syntax; the rules that involve several fields (roles, keys matching
    certificates, install mode) are only enforced by :func:`talos_os.config.loads`.
    """
    generated = MachineConfig.model_json_schema(by_alias=True, mode="validation")
    generated.pop("title", None)
    generated["description"] = SCHEMA_DESCRIPTION
    return {"$schema": SCHEMA_DIALECT, "title": SCHEMA_TITLE, **generated}
