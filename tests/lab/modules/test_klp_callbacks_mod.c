// SPDX-License-Identifier: GPL-2.0
/* klpfleet lab: a plain module the callbacks demo names as a target object. */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/module.h>

static int __init test_klp_callbacks_mod_init(void)
{
	pr_info("%s\n", __func__);
	return 0;
}

static void __exit test_klp_callbacks_mod_exit(void)
{
	pr_info("%s\n", __func__);
}

module_init(test_klp_callbacks_mod_init);
module_exit(test_klp_callbacks_mod_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klpfleet lab: livepatch target module");
