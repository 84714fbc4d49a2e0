package engine

// StreamDone reports whether the stream of socket id has finished (its
// pump is done); false for an unknown id. For the package's external tests.
func (e *Engine) StreamDone(id SockID) bool {
	e.mu.Lock()
	s := e.socks[id]
	e.mu.Unlock()
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == stDone
}
