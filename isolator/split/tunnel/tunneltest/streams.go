// Package tunneltest holds checks that the split tunnel's tests share, over
// in-memory links and over real links alike. It is imported by tests only.
package tunneltest

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// SlowReaderStreams opens n streams from client to server. The server
// never reads the first until the check is over, while a write of
// stallBytes (far more than a stream's window) waits on it; every other
// stream echoes size bytes, each byte checked. The check fails t if an
// echo fails, if the stalled write finishes before its reader is
// released, or if it does not finish within wait once released.
func SlowReaderStreams(t testing.TB, client, server *yamux.Session, n, size, stallBytes int, wait time.Duration) {
	t.Helper()
	release := make(chan struct{})
	go func() {
		for i := 0; ; i++ {
			st, err := server.AcceptStream()
			if err != nil {
				return
			}
			if i == 0 {
				go func() { <-release; io.Copy(io.Discard, st) }()
				continue
			}
			go func() { io.Copy(st, st); st.Close() }()
		}
	}()
	stalled, err := client.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	stallDone := make(chan error, 1)
	go func() { _, err := stalled.Write(make([]byte, stallBytes)); stallDone <- err }()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	start := time.Now()
	for i := range n - 1 {
		wg.Go(func() {
			st, err := client.OpenStream()
			if err != nil {
				errs <- err
				return
			}
			defer st.Close()
			msg := bytes.Repeat([]byte(fmt.Sprintf("%07d|", i)), size/8)
			go st.Write(msg)
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(st, got); err != nil {
				errs <- fmt.Errorf("stream %d: %w", i, err)
				return
			}
			if !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("stream %d: bytes differ", i)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d streams of %d KiB echoed in %v while one stream's reader stalled", n-1, size>>10, time.Since(start))
	select {
	case err := <-stallDone:
		t.Fatalf("the unread stream's %d MiB write finished early: %v", stallBytes>>20, err)
	default:
	}
	close(release)
	select {
	case err := <-stallDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatalf("the slow stream did not finish within %v once read", wait)
	}
}
