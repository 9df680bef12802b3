// SPDX-License-Identifier: GPL-2.0
/* klpfleet lab: system-state livepatch, state 1 version 2 (see loglevel_state.h). */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt
#define LAB_STATE_VERSION 2

#include "loglevel_state.h"

MODULE_DESCRIPTION("klpfleet lab: console_loglevel state, version 2");
