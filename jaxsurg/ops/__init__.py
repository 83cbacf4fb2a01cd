"""Pure jnp operators two or more methods use: warps and sampling, resizing, colour spaces."""
