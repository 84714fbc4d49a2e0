package api

import (
	"github.com/mpshim/mpshim/netflow"
)

// OpFlows returns the flows the daemon's collector knows, one page at a
// time (Request.Flows, Response.Flows).
const OpFlows = "flows"

// Page sizes of OpFlows.
const (
	DefaultFlowPage = 500
	MaxFlowPage     = 1000
)

// FlowQuery selects flows.
type FlowQuery struct {
	// Filter holds query filter terms ("[!]KIND=VALUE", see package
	// netflow/query), applied by the daemon.
	Filter []string `json:"filter,omitempty"`
	// Since, if not 0, asks only for flows changed after this
	// generation (FlowPage.Gen of an earlier answer).
	Since uint64 `json:"since,omitempty"`
	// After continues a paged answer (FlowPage.Next).
	After *FlowCursor `json:"after,omitempty"`
	// Limit is the page size (default DefaultFlowPage, at most
	// MaxFlowPage).
	Limit int `json:"limit,omitempty"`
}

// FlowCursor is a position in the daemon's flow order.
type FlowCursor struct {
	INS int    `json:"ins"`
	Seq uint64 `json:"seq"`
}

// FlowPage answers OpFlows.
type FlowPage struct {
	// Gen is the generation this page reflects; pass it as Since to get
	// later changes only. Every page of one query has the first page's
	// Gen or a later one; use the first page's.
	Gen   uint64         `json:"gen"`
	Flows []netflow.Flow `json:"flows"`
	// More says another page follows: ask again with After = Next.
	More bool        `json:"more,omitempty"`
	Next *FlowCursor `json:"next,omitempty"`
	// Tables describes each INS's flow table.
	Tables []FlowTable `json:"tables,omitempty"`
	// Accounting is false when flow accounting is disabled.
	Accounting bool `json:"accounting"`
}

// FlowTable is one INS's flow table as last reported.
type FlowTable struct {
	INS     int    `json:"ins"`
	Flows   uint64 `json:"flows"`
	Created uint64 `json:"created"`
	Evicted uint64 `json:"evicted"`
	Lost    uint64 `json:"lost"`
}
