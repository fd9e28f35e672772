# The core application every container starts first.
{
    "type": "application",
    "name": "ioncore",
    "description": "ION capability container core",
    "version": "0.5",
    "mod": ("ion.core.pack.ioncore_app", []),
    "modules": ["ion.core.pack.ioncore_app"],
    "registered": [],
    "applications": [],
}
