"""The FatturaPA 1.2.2 schema, loaded offline from ``tests/fatturapa/``, and a validator of documents."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from xml.etree import ElementTree

import xmlschema

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "fatturapa"
SCHEMA_FILE = SCHEMA_DIR / "Schema_del_file_xml_FatturaPA_v1.2.2.xsd"
DSIG_FILE = SCHEMA_DIR / "xmldsig-core-schema.xsd"
EXAMPLE_FILE = SCHEMA_DIR / "example-FPR12.xml"
DSIG = "http://www.w3.org/2000/09/xmldsig#"


@cache
def schema() -> xmlschema.XMLSchema:
    """The official schema with its xmldsig import mapped to the local copy (never fetched)."""
    loaded = xmlschema.XMLSchema(str(SCHEMA_FILE), locations={DSIG: str(DSIG_FILE)})
    assert loaded.maps.namespaces[DSIG][0].url == DSIG_FILE.as_uri(), "the xmldsig schema was not the local copy"
    return loaded


def validate(xml: bytes) -> ElementTree.Element:
    """Raise ``xmlschema.XMLSchemaValidationError`` unless ``xml`` is a valid FatturaPA document; its root."""
    root = ElementTree.fromstring(xml)
    schema().validate(root)
    return root


def text(root: ElementTree.Element, path: str) -> str | None:
    """The text at ``path`` (tags without namespace: only the root element has one)."""
    found = root.find(path)
    return None if found is None else found.text


def texts(root: ElementTree.Element, path: str) -> list[str]:
    return [element.text or "" for element in root.findall(path)]
