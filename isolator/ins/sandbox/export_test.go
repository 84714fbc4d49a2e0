package sandbox

// AllThreadsAvailable reports whether every thread can be confined at
// once, for the external tests.
var AllThreadsAvailable = allThreadsAvailable
