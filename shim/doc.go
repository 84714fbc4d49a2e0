// Package shim holds the C sources of libmpshim.so, the library preloaded
// into unmodified programs to serve their network sockets from the
// isolator's network stacks. It has no Go API: its tests compile the C
// sources with the top-level Makefile's flags and drive the library with
// small C programs (testdata/). Every .c file starts with a go:build ignore
// line so that the go tool leaves it to the C compiler.
package shim
