package netns

// Owner is the daemon a namespace name names, for the external tests.
type Owner struct{ PID int }

// ParseName parses an INS namespace name for the external tests: its
// owner and INS id.
func ParseName(name string) (Owner, int, bool) {
	o, id, ok := parseNetNSName(name)
	return Owner{PID: o.pid}, id, ok
}
