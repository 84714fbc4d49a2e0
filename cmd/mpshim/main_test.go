package main

import (
	"slices"
	"testing"
)

func TestShortForm(t *testing.T) {
	root := rootCmd()
	cases := []struct{ in, want []string }{
		{[]string{"nginx", "-g", "daemon off;"}, []string{"run", "--", "nginx", "-g", "daemon off;"}},
		{[]string{"run", "--", "curl"}, []string{"run", "--", "curl"}},
		{[]string{"doctor", "nginx"}, []string{"doctor", "nginx"}},
		{[]string{"--help"}, []string{"--help"}},
		{[]string{"help"}, []string{"help"}},
		{[]string{"completion", "bash"}, []string{"completion", "bash"}},
		{nil, nil},
	}
	for _, tc := range cases {
		if got := shortForm(root, tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("shortForm(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPreloadEnv(t *testing.T) {
	const lib = "/usr/lib/mpshim/libmpshim.so"
	cases := []struct {
		name string
		env  []string
		o    runOptions
		want []string
	}{
		{"nothing set", []string{"PATH=/bin", "HOME=/root"}, runOptions{},
			[]string{"PATH=/bin", "HOME=/root", "LD_PRELOAD=" + lib}},
		{"appended to an existing preload", []string{"LD_PRELOAD=/lib/a.so", "X=1"}, runOptions{},
			[]string{"X=1", "LD_PRELOAD=/lib/a.so:" + lib}},
		{"already preloaded", []string{"LD_PRELOAD=/lib/a.so " + lib}, runOptions{},
			[]string{"LD_PRELOAD=/lib/a.so " + lib}},
		{"empty preload", []string{"LD_PRELOAD="}, runOptions{},
			[]string{"LD_PRELOAD=" + lib}},
		{"flags override the environment", []string{"MPSHIM_SOCKET=/old", "MPSHIM_LOG=debug"}, runOptions{socket: "/s", loopback: "ins", fail: "open"},
			[]string{"MPSHIM_LOG=debug", "LD_PRELOAD=" + lib, "MPSHIM_SOCKET=/s", "MPSHIM_LOOPBACK=ins", "MPSHIM_FAIL=open"}},
		{"no flags keep the environment's", []string{"MPSHIM_SOCKET=/old"}, runOptions{},
			[]string{"MPSHIM_SOCKET=/old", "LD_PRELOAD=" + lib}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := preloadEnv(tc.env, lib, tc.o); !slices.Equal(got, tc.want) {
				t.Errorf("preloadEnv = %q, want %q", got, tc.want)
			}
		})
	}
}
