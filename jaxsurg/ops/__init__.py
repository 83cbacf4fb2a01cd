"""Pure jnp operators: warps and sampling, colour spaces, views."""
