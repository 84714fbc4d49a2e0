package ring

import (
	"errors"
	"testing"
	"time"
)

var fuzzCfg = Config{ReqSize: 4096, Slots: 4, SlotSize: 128, Spin: -1, StallTimeout: time.Nanosecond}

// fuzzSeed returns a region image holding a few valid records, one of them
// after a wrap so that a padding record precedes it.
func fuzzSeed(tb testing.TB, wrap bool) []byte {
	r := newHeapRing(tb, fuzzCfg)
	p := testProducer{r}
	if wrap {
		*r.u64(OffReserve) = 4000
		r.head = 4000
	}
	p.publish(0, []byte("hello"))
	p.publish(3, make([]byte, 200))
	return append([]byte(nil), r.mem...)
}

// FuzzConsumer feeds arbitrary bytes as the shared region image and drains
// the ring: the consumer must return requests or ErrCorrupt, never panic,
// loop forever or touch memory outside the region.
func FuzzConsumer(f *testing.F) {
	f.Add(fuzzSeed(f, false))
	f.Add(fuzzSeed(f, true))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, image []byte) {
		if err := fuzzCfg.fill(); err != nil {
			t.Fatal(err)
		}
		size := regionSize(fuzzCfg)
		mem := heapRegion(size)
		copy(mem, image)
		r := newRing(mem, fuzzCfg)
		// The image may place the consumer's start anywhere: take the
		// head the image claims, as a restarted consumer would not, to
		// reach more states.
		r.head = *r.u64(OffHead) &^ (RecAlign - 1) // the consumer's head is always aligned
		for i := 0; i < 1000; i++ {
			req, ok, err := r.poll()
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("error not wrapping ErrCorrupt: %v", err)
				}
				return
			}
			if !ok {
				return
			}
			if req.Slot >= r.nslots || len(req.Data) > r.MaxRequest() {
				t.Fatalf("request escaped validation: slot %d len %d", req.Slot, len(req.Data))
			}
			if err := r.Reply(req.Slot, req.Data[:min(len(req.Data), r.MaxReply())]); err != nil {
				t.Fatalf("reply to a validated request: %v", err)
			}
		}
		t.Fatal("1000 records from a 4 KiB ring: the consumer is looping")
	})
}
