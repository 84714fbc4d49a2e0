// Package lb is the home of mpshim's load balancer: one service address
// (a VIP) served by many INS. Its parts are in subpackages:
//
//	lb/maglev   the Maglev lookup table (which backend a new flow gets)
//	lb/xdp      the XDP program and its maps (connection tables, steering)
//
// This file only documents the directory.
package lb
