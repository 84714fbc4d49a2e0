package xdp

import (
	"net/netip"
	"testing"
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
