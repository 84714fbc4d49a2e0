package main

import "testing"

func TestParseCounts(t *testing.T) {
	for _, tc := range []struct {
		name     string
		out      string
		sys, sw  uint64
		wantFail bool
	}{
		{name: "both", out: "32307,,raw_syscalls:sys_enter,6001,100.00,,\n21667,,context-switches,6001,100.00,5.1,K/sec\n", sys: 32307, sw: 21667},
		{name: "one missing", out: "32307,,raw_syscalls:sys_enter,6001,100.00,,\n", wantFail: true},
		{name: "not counted", out: "<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n5,,context-switches,1,100.00,,\n", wantFail: true},
		{name: "the same event twice", out: "1,,context-switches\n2,,context-switches\n", wantFail: true},
		{name: "empty", out: "", wantFail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sys, sw, err := parseCounts(tc.out)
			if tc.wantFail {
				if err == nil {
					t.Fatalf("parsed %d, %d from %q; want an error", sys, sw, tc.out)
				}
				return
			}
			if err != nil || sys != tc.sys || sw != tc.sw {
				t.Fatalf("parseCounts = %d, %d, %v; want %d, %d", sys, sw, err, tc.sys, tc.sw)
			}
		})
	}
}
