"""The JSON schema documents clients fetch (``/v2/schemas/...``).

Shaped like Glance's: python-glanceclient builds its models from ``image`` (it validates
create/update against it and treats ``additionalProperties`` as the type of extra
properties), openstacksdk only fetches them.
"""

from __future__ import annotations

from typing import Any

from .attrs import CONTAINER_FORMATS, DISK_FORMATS
from .registry import MEMBER_STATUSES
from .status import STATUSES

__all__ = ["image_schema", "images_schema", "member_schema", "members_schema"]

_UUID = "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$"
_DATE = "^([\\+-]?\\d{4}(?!\\d{2}\\b))((-?)((0[1-9]|1[0-2])(\\3([12]\\d|0[1-9]|3[01]))?|W([0-4]\\d|5[0-2])(-?[1-7])?|(00[1-9]|0[1-9]\\d|[12]\\d{2}|3([0-5]\\d|6[1-6])))([T\\s]((([01]\\d|2[0-3])((:?)[0-5]\\d)?|24\\:?00)([\\.,]\\d+(?!:))?)?(\\17[0-5]\\d([\\.,]\\d+)?)?([zZ]|([\\+-])([01]\\d|2[0-3]):?([0-5]\\d)?)?)?)?$"


def _image_properties() -> dict[str, Any]:
    return {
        "id": {"type": "string", "description": "An identifier for the image", "pattern": _UUID},
        "name": {"type": ["null", "string"], "description": "Descriptive name for the image", "maxLength": 255},
        "status": {
            "type": "string",
            "readOnly": True,
            "description": "Status of the image",
            "enum": list(STATUSES),
        },
        "visibility": {
            "type": "string",
            "description": "Scope of image accessibility",
            "enum": ["community", "public", "private", "shared"],
        },
        "protected": {"type": "boolean", "description": "If true, image will not be deletable."},
        "os_hidden": {"type": "boolean", "description": "If true, image will not appear in default image list response."},
        "checksum": {"type": ["null", "string"], "readOnly": True, "maxLength": 32, "description": "md5 hash of image contents."},
        "os_hash_algo": {"type": ["null", "string"], "readOnly": True, "maxLength": 64, "description": "Algorithm to calculate the os_hash_value"},
        "os_hash_value": {"type": ["null", "string"], "readOnly": True, "maxLength": 128, "description": "Hexdigest of the image contents using the algorithm specified by the os_hash_algo"},
        "owner": {"type": ["null", "string"], "description": "Owner of the image", "maxLength": 255},
        "size": {"type": ["null", "integer"], "readOnly": True, "description": "Size of image file in bytes"},
        "virtual_size": {"type": ["null", "integer"], "readOnly": True, "description": "Virtual size of image in bytes"},
        "container_format": {
            "type": ["null", "string"],
            "description": "Format of the container",
            "enum": [None, *CONTAINER_FORMATS],
        },
        "disk_format": {
            "type": ["null", "string"],
            "description": "Format of the disk",
            "enum": [None, *DISK_FORMATS],
        },
        "created_at": {"type": "string", "readOnly": True, "description": "Date and time of image registration"},
        "updated_at": {"type": "string", "readOnly": True, "description": "Date and time of the last image modification"},
        "tags": {"type": "array", "description": "List of strings related to the image", "items": {"type": "string", "maxLength": 255}},
        "direct_url": {"type": "string", "readOnly": True, "description": "URL to access the image file kept in external store"},
        "min_ram": {"type": "integer", "description": "Amount of ram (in MB) required to boot image."},
        "min_disk": {"type": "integer", "description": "Amount of disk space (in GB) required to boot image."},
        "self": {"type": "string", "readOnly": True, "description": "An image self url"},
        "file": {"type": "string", "readOnly": True, "description": "An image file url"},
        "stores": {"type": "string", "readOnly": True, "description": "Store in which image data resides."},
        "schema": {"type": "string", "readOnly": True, "description": "An image schema url"},
        "locations": {
            "type": "array",
            "description": "A set of URLs to access the image file kept in external store",
            "items": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "maxLength": 255},
                    "metadata": {"type": "object"},
                    "validation_data": {"type": "object", "writeOnly": True},
                },
                "required": ["url", "metadata"],
            },
        },
        # Common extra properties Glance documents in its schema (not base attributes).
        "kernel_id": {"type": ["null", "string"], "pattern": _UUID, "is_base": False, "description": "ID of image stored in Glance that should be used as the kernel when booting an AMI-style image."},
        "ramdisk_id": {"type": ["null", "string"], "pattern": _UUID, "is_base": False, "description": "ID of image stored in Glance that should be used as the ramdisk when booting an AMI-style image."},
        "instance_uuid": {"type": "string", "is_base": False, "description": "Metadata which can be used to record which instance this image is associated with."},
        "architecture": {"type": "string", "is_base": False, "description": "Operating system architecture"},
        "os_distro": {"type": "string", "is_base": False, "description": "Common name of operating system distribution"},
        "os_version": {"type": "string", "is_base": False, "description": "Operating system version as specified by the distributor."},
        "description": {"type": "string", "is_base": False, "description": "A human-readable string describing this image."},
        "cinder_encryption_key_id": {"type": "string", "is_base": False, "description": "Identifier in the OpenStack Key Management Service for the encryption key."},
        "cinder_encryption_key_deletion_policy": {"type": "string", "enum": ["on_image_deletion", "do_not_delete"], "is_base": False, "description": "States the condition under which the encryption key is deleted."},
    }


def image_schema() -> dict[str, Any]:
    return {
        "name": "image",
        "properties": _image_properties(),
        "additionalProperties": {"type": "string"},
        "links": [
            {"rel": "self", "href": "{self}"},
            {"rel": "enclosure", "href": "{file}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def images_schema() -> dict[str, Any]:
    return {
        "name": "images",
        "properties": {
            "images": {"type": "array", "items": image_schema()},
            "schema": {"type": "string"},
            "first": {"type": "string"},
            "next": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    }


def member_schema() -> dict[str, Any]:
    return {
        "name": "member",
        "properties": {
            "created_at": {"type": "string", "description": "Date and time of image member creation"},
            "image_id": {"type": "string", "description": "An identifier for the image", "pattern": _UUID},
            "member_id": {"type": "string", "description": "An identifier for the image member (tenantId)"},
            "status": {"type": "string", "description": "The status of this image member", "enum": list(MEMBER_STATUSES)},
            "updated_at": {"type": "string", "description": "Date and time of last modification of image member"},
            "schema": {"type": "string", "readOnly": True},
        },
    }


def members_schema() -> dict[str, Any]:
    return {
        "name": "members",
        "properties": {
            "members": {"type": "array", "items": member_schema()},
            "schema": {"type": "string"},
        },
        "links": [{"rel": "self", "href": "{self}"}, {"rel": "describedby", "href": "{schema}"}],
    }
