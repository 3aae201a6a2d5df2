"""Work that uses a built pipeline: tracking images and videos (``tracking``), test-time
fitting of an avatar (``fitting``) and posing its Gaussians in world space (``posing``). Jobs get
components through the registry, never by importing a plugin module."""
