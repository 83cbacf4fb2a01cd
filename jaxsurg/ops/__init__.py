"""Pure jnp operators: warps and sampling, intermediate-flow algebra, colour spaces, views."""
