/* SPDX-License-Identifier: GPL-2.0 */
/* Shared by the klpfleet lab's callback livepatches: one log line per callback, in the selftests' format. */
#ifndef KLPFLEET_LAB_CALLBACKS_LOG_H
#define KLPFLEET_LAB_CALLBACKS_LOG_H

#include <linux/livepatch.h>
#include <linux/module.h>

static const char *const lab_module_state_names[] = {
	[MODULE_STATE_LIVE] = "[MODULE_STATE_LIVE] Normal state",
	[MODULE_STATE_COMING] = "[MODULE_STATE_COMING] Full formed, running module_init",
	[MODULE_STATE_GOING] = "[MODULE_STATE_GOING] Going away",
	[MODULE_STATE_UNFORMED] = "[MODULE_STATE_UNFORMED] Still setting it up",
};

/* vmlinux objects have no struct module; module objects print the module's state. */
static void lab_log_object(const char *callback, struct klp_object *obj)
{
	if (obj->mod)
		pr_info("%s: %s -> %s\n", callback, obj->mod->name, lab_module_state_names[obj->mod->state]);
	else
		pr_info("%s: vmlinux\n", callback);
}

#endif
