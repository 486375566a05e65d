/* >>numeric */
