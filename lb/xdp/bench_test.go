package xdp

import (
	"net/netip"
	"testing"
	"time"
)

// BenchmarkProgram runs the program in the kernel (BPF_PROG_TEST_RUN with
// repeat) on the packets that matter: an established flow's, a new flow's
// SYN, and a packet for another address. It reports the kernel's time per
// run; the figure under real traffic comes from bench/lb.
func BenchmarkProgram(b *testing.B) {
	for _, tc := range []struct {
		name  string
		frame []byte
		prep  bool
	}{
		{"established", tcp4(ap(client4, 1000), ap(vip4, 80), tcpACK), true},
		{"syn", tcp4(ap(client4, 1001), ap(vip4, 80), tcpSYN), false},
		{"not-vip", tcp4(ap(client4, 1002), ap(netip.MustParseAddr("10.99.0.2"), 80), tcpACK), false},
		{"established-v6", tcp6(ap(client6, 1000), ap(vip6, 80), tcpACK), true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			lb := newBalancer(b, Config{}, 20)
			if tc.prep {
				run(b, lb, tc.frame)
				run(b, lb, tc.frame) // promoted
			}
			b.ResetTimer()
			ret, per, err := lb.Program().Benchmark(tc.frame, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			if ret != ActionPass {
				b.Fatalf("verdict %d", ret)
			}
			b.ReportMetric(float64(per.Nanoseconds()), "ns/pkt")
		})
	}
}

// BenchmarkProgramFlows runs the program once per call (BPF_PROG_TEST_RUN
// without repeat) over the packets of 1,000 flows in turn, so that the
// lookups meet many keys and the caches what a system call leaves of
// them, as under real traffic: established flows to the VIP, and packets
// to another address in frames to another MAC, as traffic to an INS's own
// address comes (the prefilter, one VIP lookup, then pass). The kernel's
// time per run is reported (its timing of one run included).
func BenchmarkProgramFlows(b *testing.B) {
	other := netip.MustParseAddr("10.99.0.2")
	for _, tc := range []struct {
		name string
		dst  netip.Addr
	}{{"established", vip4}, {"not-vip", other}} {
		b.Run(tc.name, func(b *testing.B) {
			lb := newBalancer(b, Config{}, 20)
			frames := make([][]byte, 1000)
			for i := range frames {
				src := ap(client4, uint16(2000+i))
				run(b, lb, tcp4(src, ap(tc.dst, 80), tcpSYN))
				frames[i] = tcp4(src, ap(tc.dst, 80), tcpACK)
				if tc.dst != vip4 {
					copy(frames[i], backendMAC(1))
				}
				run(b, lb, frames[i]) // promoted
			}
			var total time.Duration
			b.ResetTimer()
			for i := range b.N {
				ret, d, err := lb.Program().Benchmark(frames[i%len(frames)], 1, nil)
				if err != nil {
					b.Fatal(err)
				}
				if ret != ActionPass {
					b.Fatalf("verdict %d", ret)
				}
				total += d
			}
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/pkt")
		})
	}
}
