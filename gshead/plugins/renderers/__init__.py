"""Deprecated: the rasterizers moved to ``gshead.plugins.rasterizers`` (in gshead 0.2; this
package goes away in 0.3). Its modules are aliases that warn on import."""
