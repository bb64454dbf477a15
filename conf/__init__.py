# The config folder ships inside the package as segkit.conf (setup.cfg maps it): segkit.files.conf_dir() finds it,
# whether segkit runs from this checkout or from a `pip install .` elsewhere.
